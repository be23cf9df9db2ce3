"""The engine: Celery app (workers.engine.app), migration record, pools, drivers, metrics."""
