"""Every Redis key quickmig uses, with its lifetime, in one place.

Celery's own keys (queues `snapshot`, `copy`, `cutover`, `unacked*`) are kombu's;
everything below is ours.
"""
import hashlib

PREFIX = "quickmig:"

# The migration record (JSON). Source of truth for state, phases, bytes, downtime.
# Kept while active; expires RECORD_TTL_S after reaching an end state.
RECORD_TTL_S = 30 * 24 * 3600


def migration(mid: str) -> str:
    return f"{PREFIX}migration:{mid}"


def plan(pid: str) -> str:
    return f"{PREFIX}plan:{pid}"


def plan_lock(pid: str) -> str:
    """Held while one process releases a plan's next members (workers.engine.plans)."""
    return f"{PREFIX}plan:{pid}:lock"


# Every plan id scored by creation time; and the plans not ended yet, which each
# reconciler pass carries on.
PLANS_INDEX = f"{PREFIX}plans"
PLANS_RUNNING = f"{PREFIX}plans:running"
PLAN_LOCK_TTL_S = 30


def group_barrier(pid: str, group: str, part: str = "") -> str:
    """A `together` group's barriers (workers.coord.group_barrier): its hash (part ""), and the
    set of members arrived at each barrier (part "prepared" or "imported")."""
    return f"{PREFIX}plan:{pid}:group:{group}" + (f":{part}" if part else "")


# Sorted set of every migration id, scored by creation time (for `quickmig list`).
# Members whose record has expired are dropped when listed.
MIGRATIONS_INDEX = f"{PREFIX}migrations"

# Per pool, a sorted set of worker node names scored by their last heartbeat (Unix time).
# A member is alive while its score is within WORKER_ALIVE_S; older ones are trimmed.
WORKER_HEARTBEAT_EVERY_S = 10
WORKER_ALIVE_S = 3 * WORKER_HEARTBEAT_EVERY_S


def workers(pool: str) -> str:
    return f"{PREFIX}workers:{pool}"


# Ids of migrations not yet at an end state, for the reconciler (members leave on their end).
ACTIVE_SET = f"{PREFIX}active"


# Per-VM lease: value is the holding migration id. Set at enqueue, extended by every task
# while it works, deleted when the migration ends.
VM_LOCK_TTL_S = 3600


def vm_lock(vm_id: str) -> str:
    return f"{PREFIX}lock:vm:{vm_id}"


# Per-VM fencing counter: INCR on each lock acquisition, never expires, so a token from
# an older lease can never equal the current one.
def replication_probe(mid: str) -> str:
    """Written by a fence under Sentinel so WAIT covers every write before it (coord.locks)."""
    return f"{PREFIX}replicated:{mid}"


def vm_fence(vm_id: str) -> str:
    return f"{PREFIX}fence:vm:{vm_id}"

# Per-migration step claim: value is the token of the one task delivery working on the
# migration now. Short, extended by a heartbeat while the step runs, so a killed worker's
# claim lapses quickly and a redelivery can take over.
STEP_CLAIM_TTL_S = 20


def step_claim(mid: str) -> str:
    return f"{PREFIX}claim:{mid}"


# Held for one reconciler pass, so two pool processes never reconcile at once.
RECONCILER_LOCK = f"{PREFIX}reconciler"


# Per-host costs the last switchover measured (hash: save_bps, register_start_s), used to
# predict the next one's downtime. Refreshed by every cutover; stale ones age out.
CUTOVER_COSTS_TTL_S = 7 * 24 * 3600


def cutover_costs(host: str) -> str:
    return f"{PREFIX}costs:{host}"


# What `quickmig calibrate` measured on one host (a JSON object, workers.model.host_profile):
# the downtime prediction's figures for that host until its cutovers measured their own.
# Kept until the next calibration replaces it.
def host_calibration(host: str) -> str:
    return f"{PREFIX}calibration:{host}"


# Sorted set of migration ids whose saved source VM is kept (--keep-source), scored by the
# Unix time it may be removed. Members leave when the reaper removed the source VM.
KEPT_SOURCES = f"{PREFIX}kept-sources"


# Copy resume record of one file of one migration (hash): "identity" (JSON of the source's
# size and times), "sent" (bytes sent over all attempts), "c:<index>" -> chunk SHA-256.
# Deleted when the file is verified; otherwise expires (refreshed on every attempt).
COPY_RESUME_TTL_S = 7 * 24 * 3600


def copy_resume(mid: str, dest_path: str) -> str:
    return f"{PREFIX}copy:{mid}:{hashlib.sha256(dest_path.lower().encode()).hexdigest()[:16]}"


def copy_resume_match(mid: str) -> str:
    """SCAN pattern for every copy resume record of one migration (audits and tests)."""
    return f"{PREFIX}copy:{mid}:*"


# Bandwidth limits in bytes/s (plain integers, set by `quickmig throttle`, no expiry):
# one global, one per (source, destination) host pair. Missing or 0 = unlimited. Read on
# every chunk, so a change applies to copies already running.
THROTTLE_GLOBAL = f"{PREFIX}throttle:global"


def throttle_pair(source: str, destination: str) -> str:
    return f"{PREFIX}throttle:pair:{source}:{destination}"


# Scheduler state of a limit (the time its budget is spent up to); expires when idle.
def throttle_state(limit_key: str) -> str:
    return f"{PREFIX}throttle-state:{limit_key[len(PREFIX):]}"


# Copy slots per host (sorted set: holder -> expiry time); at most the host's max_copies
# members reading from it ("read") and as many writing to it ("write"). A holder that
# stops heartbeating expires after COPY_SLOT_TTL_S.
COPY_SLOT_TTL_S = 60


def copy_slots(direction: str, host: str) -> str:
    return f"{PREFIX}slots:{direction}:{host}"


# Every slot acquisition and release, JSON lines with Redis' clock (list, newest last,
# capped at COPY_SLOT_LOG_MAX entries): what the slot tests and operators audit.
COPY_SLOT_LOG = f"{PREFIX}slots:log"
COPY_SLOT_LOG_MAX = 10000


# Migration admission (workers.coord.admission): per host, the set of migration ids admitted with
# that host as source or destination (at most the host's max_migrations). Members leave
# when their migration ends (workers.engine.step.end; the reconciler removes ended or vanished ones).
def admitted(host: str) -> str:
    return f"{PREFIX}admission:host:{host}"


# Migrations waiting for admission: sorted set of ids scored by enqueue time (FIFO), and
# a hash id -> JSON [source, destination] that the admission step reads. Both lose the id
# when it is admitted, withdrawn (cancel) or ends.
ADMISSION_WAITING = f"{PREFIX}admission:waiting"
ADMISSION_ROUTES = f"{PREFIX}admission:routes"

# Every admission and release, JSON lines with Redis' clock (list, newest last, capped):
# what the load test and operators audit against max_migrations.
ADMISSION_LOG = f"{PREFIX}admission:log"
ADMISSION_LOG_MAX = 10000


# ISO images on a destination that several migrated VMs may share (workers.coord.shared_files),
# per (destination, path): a lease held by the one migration deciding whether to copy the
# image or share the one there (expires ISO_LEASE_TTL_S after its holder stops beating);
# the set of migrations using it; and a marker that quickmig put it there (only those may
# be deleted, and only with their last user). No expiry: they live as long as the image.
ISO_LEASE_TTL_S = 30


def _iso(destination: str, path: str) -> str:
    return f"{PREFIX}iso:{destination}:{hashlib.sha256(path.lower().encode()).hexdigest()[:16]}"


def iso_lease(destination: str, path: str) -> str:
    return _iso(destination, path) + ":lease"


def iso_users(destination: str, path: str) -> str:
    return _iso(destination, path) + ":users"


def iso_ours(destination: str, path: str) -> str:
    return _iso(destination, path) + ":ours"


# Every state change of every migration (stream; workers.model.record.Store appends each in
# the same transaction as the change): fields id, vm, source, destination, old, new, at,
# seq (the migration's count of states entered, so a reader can order one migration's
# events), by (who asked for it, when someone did). Trimmed to about `[events]
# max_entries` (approximate MAXLEN); the entry id is the SSE event id of `GET /v1/events`.
EVENTS = f"{PREFIX}events"
# what the orphan sweep found and did, newest first (workers.steps.orphans), and its lock
ORPHANS = f"{PREFIX}orphans"
ORPHAN_SWEEP_LOCK = f"{PREFIX}lock:orphan-sweep"
EVENTS_MAX_ENTRIES_DEFAULT = 100_000  # `[events] max_entries` when the config does not say


# An Idempotency-Key of the HTTP API (JSON: body digest, migration id once known), per
# token name and key digest. Expires IDEMPOTENCY_TTL_S after the request; a refused
# request's key is deleted at once, so a corrected retry may reuse it.
IDEMPOTENCY_TTL_S = 24 * 3600


def idempotency(caller: str, key: str) -> str:
    return f"{PREFIX}idem:{caller}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


# The Redis intake (producer.intake): a stream other systems XADD migration requests to
# (request_id, vm, source, destination, options), consumed by the group "quickmig-intake";
# an entry is deleted once its outcome is written. The outcome per request_id (hash: state
# accepted|refused, migration_id or error, at) expires REQUEST_TTL_S after it is written.
REQUESTS = f"{PREFIX}requests"
REQUEST_TTL_S = 7 * 24 * 3600


def request(request_id: str) -> str:
    return f"{PREFIX}request:{request_id}"


# The requests one API token was admitted in the last minute (producer.api.ratelimit: a
# sorted set of their times, expiring a minute after the last).
def api_rate(token_name: str) -> str:
    return f"{PREFIX}api-rate:{token_name}"


# A worker's answer to a producer's VM lookup (workers.steps.lookup): a list the producer
# waits on, gone soon after whether or not anyone read it.
LOOKUP_REPLY_TTL_S = 120


def lookup_reply(request_id: str) -> str:
    return f"{PREFIX}lookup:{request_id}"


# Webhook deliveries (producer.webhooks), per subscription NAME: how far the events stream
# has been read (string: the last entry id taken), each migration's events not yet
# delivered (list, oldest first), when each such migration's next attempt is due (sorted
# set: migration id by Unix time), the failed attempts of each one's oldest event (hash:
# migration id -> JSON count, first failure), the delivery log (list, newest first, the
# last WEBHOOK_LOG_MAX kept), counters (hash), and the lease of the one process delivering.
WEBHOOK_LOG_MAX = 1000
WEBHOOK_LEASE_TTL_S = 30


def webhook(name: str, part: str) -> str:
    return f"{PREFIX}webhook:{name}:{part}"


def webhook_queue(name: str, mid: str) -> str:
    return f"{PREFIX}webhook:{name}:queue:{mid}"
