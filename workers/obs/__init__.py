"""Observability: Prometheus metrics (per node, and the fleet's state read from Redis),
worker logs that carry each line's migration, and the workers' liveness beats."""
