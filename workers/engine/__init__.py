"""The machinery steps run on: the Celery app and its routing, what each worker process
does at its lifecycle points, the per-process handles (config, Redis, drivers, SMB
endpoints), the step framework (claims, fencing, retries, failure routing) and the
reconciler that finds stuck migrations."""
