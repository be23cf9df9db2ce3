"""The steps of a migration, one Celery task each (docs/design.md section 1): snapshot,
copy (with pre-copy rounds), prepare, cutover, finish, rollback, and the reaper of kept
source VMs; with the helpers several steps share (transfer, checkpoint)."""
