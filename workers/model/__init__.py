"""The domain model: what a migration is (states, the record, its options, the files it
moves), the names everything else shares (Redis keys, task names and queues, the digest
scheme), the configuration, and the root of quickmig's exceptions. No Celery, no WinRM,
no SMB here; only the record store talks to Redis."""
