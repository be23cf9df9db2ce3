"""Every Redis key quickmig uses, with its lifetime, in one place.

Celery's own keys (queues `snapshot`, `copy`, `cutover`, `unacked*`) are kombu's;
everything below is ours.
"""
PREFIX = "quickmig:"

# The migration record (JSON). Source of truth for state, phases, bytes, downtime.
# Kept while active; expires RECORD_TTL_S after reaching an end state.
RECORD_TTL_S = 30 * 24 * 3600


def migration(mid: str) -> str:
    return f"{PREFIX}migration:{mid}"


# Sorted set of every migration id, scored by creation time (for `quickmig list`).
# Members whose record has expired are dropped when listed.
MIGRATIONS_INDEX = f"{PREFIX}migrations"

# Per-VM lease: value is the holding migration id. Set at enqueue, extended by every task
# while it works, deleted when the migration ends.
VM_LOCK_TTL_S = 3600


def vm_lock(vm_id: str) -> str:
    return f"{PREFIX}lock:vm:{vm_id}"


# Per-VM fencing counter: INCR on each lock acquisition, never expires, so a token from
# an older lease can never equal the current one.
def vm_fence(vm_id: str) -> str:
    return f"{PREFIX}fence:vm:{vm_id}"


# Per-host costs the last switchover measured (hash: save_bps, register_start_s), used to
# predict the next one's downtime. Refreshed by every cutover; stale ones age out.
CUTOVER_COSTS_TTL_S = 7 * 24 * 3600


def cutover_costs(host: str) -> str:
    return f"{PREFIX}costs:{host}"


# Sorted set of migration ids whose saved source VM is kept (--keep-source), scored by the
# Unix time it may be removed. Members leave when the reaper removed the source VM.
KEPT_SOURCES = f"{PREFIX}kept-sources"
