"""The engine: Celery app (workers.celery), migration record, pools, drivers, metrics."""
