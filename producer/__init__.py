"""The front door: validate and enqueue migration requests, status, CLI."""
from producer.api import (MigrationRequest, Producer, RequestError, enqueue_migration,  # noqa: F401
                          get_migration, list_migrations, wait_for)
