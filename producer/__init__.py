"""The front door: validate and enqueue migration requests, status, CLI."""
from producer.migrations import (  # noqa: F401
                          MigrationRequest,
                          Producer,
                          RequestError,
                          enqueue_migration,
                          get_migration,
                          list_migrations,
                          wait_for,
)
