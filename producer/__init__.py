"""The front door: validate and enqueue migration requests, cancel, status, the CLI.

    from producer import enqueue_migration, wait_for
"""
from producer.migrations import (
    MigrationRequest,
    Producer,
    RequestError,
    cancel_migration,
    enqueue_migration,
    get_migration,
    list_migrations,
    wait_for,
)

__all__ = ["MigrationRequest", "Producer", "RequestError", "cancel_migration", "enqueue_migration",
           "get_migration", "list_migrations", "wait_for"]
