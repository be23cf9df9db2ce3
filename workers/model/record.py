"""The migration record in Redis: the source of truth for every migration.

Celery messages carry only the migration id; everything a task needs to know it reads
here, and every change of state is a compare-and-set so a task delivered twice cannot
move a migration twice.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypedDict, cast

import redis

from workers.model import finished, keys, states
from workers.model.errors import QuickmigError


class Phase(TypedDict, total=False):
    start: float  # Unix time the phase began
    end: float


class Copied(TypedDict, total=False):
    """One file copied to (or found on) the destination, verified."""
    path: str            # source host path
    dest: str            # destination host path
    bytes: int
    digest: str | None   # `digest_scheme` over the whole file, as the destination hashed it
    digest_scheme: str
    seconds: float
    throttled_s: float   # of those, what its slowest-waiting stream spent held by the bandwidth limits
    bytes_reused: int    # kept from an interrupted attempt (resume record)
    bytes_sent: int      # sent over every attempt
    shared: bool         # an ISO image already there, same content, shared with other VMs
    planned_bytes: int   # a shared image's size, counted as done in the progress


class Progress(TypedDict, total=False):
    """rec["progress"] while a file copies (workers.coord.progress)."""
    file: str | None
    bytes_done: int
    bytes_total: int
    rate_bps: int | None
    eta_seconds: float | None
    at: float


class Round(TypedDict):
    bytes: int
    seconds: float
    at: float


class MigrationRecord(TypedDict, total=False):
    """Every field a migration record may have, who writes it, and what it means. The JSON
    in Redis is this; `quickmig status --json` prints it. Fields are added as the migration
    goes; none is ever renamed in place (readers of older records would lose it). An ended
    record sheds what only a running migration reads (workers.model.finished)."""
    # created by the producer (new_record)
    id: str
    vm: str
    vm_id: str
    source: str
    destination: str
    state: str                       # workers.model.states
    created_at: float
    updated_at: float                # every change (Store.update)
    phases: dict[str, Phase]         # phase name -> start/end
    history: list[dict[str, Any]]    # every state entered: {"state", "at"}, and "by" when someone asked for it
    requested_by: str | None         # the API token's name that asked for it (None: the CLI or Python API)
    downtime_seconds: float | None   # Save-VM to the destination VM verified running
    bytes_copied: int
    bytes_total: int | None          # planned bytes of every file (see `planned`)
    error: str | None                # why it rolled back or failed, with what to do
    fence: int                       # the VM lease's fencing token
    options: dict[str, Any]          # workers.model.options, validated
    member_of: dict[str, Any]        # the plan it is a member of: plan (its id), group, member (workers.engine.plans),
    #                                  and `together`, its group's size, when the group switches over together
    hooks: dict[str, dict[str, Any]]  # its plan group's pre_cutover / post_cutover: url, timeout_s, secret (a
    #                                  name in the credentials file, never the secret), on_failure (post_cutover)
    hook_calls: list[dict[str, Any]]  # each call made (workers.steps.hooks): hook, url, at, seconds, ok, status,
    #                                   outcome
    # admission (workers.coord.admission) and the step framework (workers.engine.step)
    admitted_at: float
    waiting: str                     # why it waits now (a host full, a copy slot, a window)
    resume_at: float                 # a step that ended early comes back then (Later)
    retry: dict[str, Any]            # a transient failure's retry to come: step, attempt, next_at, reason
    reconciler: dict[str, Any]       # the reconciler's re-sends in this state: state, nudges, at, idle_s
    cancelled_at: float
    # snapshot step
    checkpoint_at: float             # our latest checkpoint (the guest's writes since go to the leaf)
    snapshot: dict[str, Any]         # our first checkpoint: id, name, config_path
    plan: dict[str, list[dict[str, str]]]  # {"frozen": [{"path", "kind"}]}: what the base copy moves
    vm_folder: str                   # the VM's folder on the source: --destination-path keeps what is in it
    cold: str                        # a cold move: the VM's state (Off or Saved) when its files were copied
    ejected_isos: list[dict[str, str]]  # --eject-unmovable-isos: each DVD drive emptied on the destination's
    #                                    copy (path: the ISO image it held, drive: e.g. "SCSI 0:1"); the source keeps it
    # copying (workers.steps.transfer, downtime_copy)
    created_files: list[str]         # destination paths we created (and their .partial), for rollback
    created_folders: list[str]       # destination folders the copies created, removed by a rollback if left empty
    copied: list[Copied]             # while active, a failed record's and a kept source's (workers.model.finished)
    copied_by_kind: dict[str, dict[str, Any]]  # `copied` summed per kind once ended: files, shared, bytes,
    #                                            bytes_sent, bytes_reused, seconds, throttled_s
    planned: dict[str, int]          # source path -> size, for bytes_total
    progress: Progress
    # pre-copy gate (workers.steps.precopy)
    rounds: list[Round]
    predicted_downtime_seconds: float
    guest_write_bps: int
    copy_bps: int                    # the copies while the VM ran, bandwidth limits included
    downtime_copy_bps: int           # the same copies without their waits for the limits: the downtime copy's rate
    # where each part of the prediction came from: save_bps, register_start_s, downtime_copy_bps ->
    # "measured" (earlier switchovers), "calibrated <time>" (quickmig calibrate), "this migration", "default"
    prediction_sources: dict[str, str]
    delta_bytes: int
    downtime_paths: list[str]        # the files the cutover copies, as the gate last saw them
    # prepare (workers.steps.prepare)
    parents_fixed: list[str]         # destination differencing disks re-parented before the downtime
    validation_left: list[dict[str, Any]]  # what Compare-VM's clean-up could not remove: kind, id, name, error
    # cutover (workers.steps.cutover)
    automatic_start_action: str      # the source VM's, before the cutover set it to Nothing (so a host
    #                                  restart never resumes the saved copy); the VM gets it back wherever it runs on
    save_started_at: float           # the downtime starts here
    import_started_at: float
    import_config_path: str          # the configuration imported: only the VM registered from it is ours
    start_started_at: float          # from here the guest may run on the destination
    downtime_bytes: int
    downtime_breakdown: dict[str, float]  # save, copy, import, start (and a together member's group_wait)
    verified_at: float               # the VM verified running on the destination (its heartbeat)
    group_waiting: str               # a together member's barrier it waits at: prepared, then imported
    group_times: dict[str, float]    # a together member ready to start: its downtime's times so far
    cutover_resumed: bool            # a redelivered cutover rolled forward
    rollback_seconds: float
    paths_refused: list[str]         # created_files a rollback would not delete (not plain paths in the roots)
    # finish and --keep-source (workers.steps.finish, keep_source)
    source_kept_until: float
    source_removed_at: float | None
    source_note: str | None


class RecordNotFound(QuickmigError):
    pass


class StaleState(QuickmigError):
    """The record is not in the state the caller expected (e.g. a duplicate delivery)."""

    def __init__(self, mid: str, expected: Iterable[str], actual: str):
        self.actual = actual
        super().__init__(f"migration {mid} is {actual}, expected one of {sorted(expected)}")


def new_record(*, vm: str, vm_id: str, source: str, destination: str, fence: int,
               options: dict | None = None, requester: str | None = None) -> MigrationRecord:
    now = time.time()
    first: dict[str, Any] = {"state": states.QUEUED, "at": now}
    if requester is not None:
        first["by"] = requester
    return {
        "id": uuid.uuid4().hex[:16],
        "vm": vm,
        "vm_id": vm_id,
        "source": source,
        "destination": destination,
        "state": states.QUEUED,
        "created_at": now,
        "updated_at": now,
        "phases": {},
        "downtime_seconds": None,
        "bytes_copied": 0,
        "bytes_total": None,
        "error": None,
        "fence": fence,
        "options": options or {},
        "requested_by": requester,
        "history": [first],
    }


def _fields(fields: dict[str, object]) -> MigrationRecord:
    """`fields`, refused if one is not a field of MigrationRecord (a misspelt name would be
    written beside the real one, and nothing would read it)."""
    unknown = set(fields) - set(MigrationRecord.__optional_keys__)
    if unknown:
        raise ValueError(f"not fields of a migration record: {', '.join(sorted(unknown))}")
    return cast(MigrationRecord, fields)


def event(rec: MigrationRecord, old: str | None) -> dict[str, str]:
    """The events stream's entry for `rec` having just entered its state from `old` (None: created)."""
    last = rec["history"][-1]
    fields = {"id": rec["id"], "vm": rec["vm"], "source": rec["source"], "destination": rec["destination"],
              "old": old or "", "new": rec["state"], "at": repr(last["at"]), "seq": str(len(rec["history"]))}
    if last.get("by"):
        fields["by"] = str(last["by"])
    return fields


def event_data(fields: dict[str, str]) -> dict:
    """An events stream entry's fields as the JSON an SSE event or a webhook carries."""
    out: dict = {k: fields.get(k) for k in ("id", "vm", "source", "destination", "new")}
    out["old"] = fields.get("old") or None
    out["at"] = float(fields["at"])
    out["seq"] = int(fields["seq"])
    out["by"] = fields.get("by")
    return out


# How the store's clients talk to Redis: text replies; a dead connection noticed within
# 30 s (health checks) rather than at the next timeout.
CLIENT_OPTIONS: dict[str, Any] = {"decode_responses": True, "socket_timeout": 30, "socket_connect_timeout": 10,
                                  "health_check_interval": 30}


class Store:
    def __init__(self, client: redis.Redis, events_max_entries: int = keys.EVENTS_MAX_ENTRIES_DEFAULT):
        self.r = client
        self.events_max_entries = events_max_entries

    @classmethod
    def from_url(cls, url: str, events_max_entries: int = keys.EVENTS_MAX_ENTRIES_DEFAULT) -> Store:
        return cls(redis.Redis.from_url(url, **CLIENT_OPTIONS), events_max_entries)

    def _append_event(self, p: redis.client.Pipeline, rec: MigrationRecord, old: str | None) -> None:
        # in the caller's transaction: a state change and its event are stored together or not at all
        p.xadd(keys.EVENTS, cast(Any, event(rec, old)), maxlen=self.events_max_entries, approximate=True)

    def create(self, rec: MigrationRecord) -> str:
        """Store a new migration; returns the id of its `queued` event in the events stream."""
        key = keys.migration(rec["id"])
        with self.r.pipeline() as p:
            p.set(key, json.dumps(rec), nx=True)
            p.zadd(keys.MIGRATIONS_INDEX, {rec["id"]: rec["created_at"]})
            p.sadd(keys.ACTIVE_SET, rec["id"])
            self._append_event(p, rec, None)
            return cast(str, p.execute()[-1])

    def delete(self, mid: str, event_id: str | None = None) -> None:
        """Remove a migration that never started (its enqueue failed after create), and with
        `event_id` its `queued` event, so that a reader who has not read it yet never hears of a
        migration that does not exist."""
        with self.r.pipeline() as p:
            p.delete(keys.migration(mid))
            p.zrem(keys.MIGRATIONS_INDEX, mid)
            p.srem(keys.ACTIVE_SET, mid)
            if event_id is not None:
                p.xdel(keys.EVENTS, event_id)
            p.execute()

    def get(self, mid: str) -> MigrationRecord:
        raw = self.r.get(keys.migration(mid))
        if raw is None:
            raise RecordNotFound(f"no migration with id {mid!r}")
        return json.loads(raw)

    def recent(self, limit: int = 100) -> list[MigrationRecord]:
        ids = cast("list[str]", self.r.zrevrange(keys.MIGRATIONS_INDEX, 0, limit - 1))
        if not ids:
            return []
        raws = self.r.mget([keys.migration(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.r.zrem(keys.MIGRATIONS_INDEX, *gone)
        return [json.loads(raw) for raw in raws if raw is not None]

    def active_ids(self) -> list[str]:
        """Migrations not yet at an end state (what the reconciler watches)."""
        return sorted(cast("set[str]", self.r.smembers(keys.ACTIVE_SET)))

    def forget_active(self, mid: str) -> None:
        self.r.srem(keys.ACTIVE_SET, mid)

    def update(self, mid: str, change: Callable[[MigrationRecord], object]) -> MigrationRecord:
        """Apply `change` to the record atomically (optimistic, retried on conflict); returns
        the record as `change` left it. One that has ended is stored compacted
        (`finished.compact`), so a caller ending a migration still has what it releases."""
        key = keys.migration(mid)
        while True:
            with self.r.pipeline() as p:
                try:
                    p.watch(key)
                    raw = p.get(key)
                    if raw is None:
                        raise RecordNotFound(f"no migration with id {mid!r}")
                    rec = json.loads(raw)
                    old = rec["state"]
                    change(rec)
                    rec["updated_at"] = time.time()
                    p.multi()
                    if rec["state"] != old:
                        self._append_event(p, rec, old)
                    if rec["state"] in states.ENDS:
                        p.set(key, json.dumps(finished.compact(cast(dict, rec))), ex=keys.RECORD_TTL_S)
                        p.srem(keys.ACTIVE_SET, mid)
                    else:
                        p.set(key, json.dumps(rec))
                    p.execute()
                    return rec
                except redis.WatchError:
                    continue

    def set(self, mid: str, **fields: object) -> MigrationRecord:
        """Set these fields of the record (one atomic update); returns the record."""
        known = _fields(fields)
        return self.update(mid, lambda rec: rec.update(known))

    def transition(self, mid: str, expect: Iterable[str], to: str, *, by: str | None = None,
                   **fields: object) -> MigrationRecord:
        """Move from one of `expect` to `to`, stamping phase ends and starts; `by`: who asked
        for it (an API token's name), kept in the history entry."""
        expect = set(expect)
        known = _fields(fields)

        def change(rec: MigrationRecord) -> None:
            src = rec["state"]
            if src not in expect:
                raise StaleState(mid, expect, src)
            states.check(src, to)
            now = time.time()
            old_phase = states.PHASE_OF.get(src)
            if old_phase and old_phase in rec["phases"]:
                rec["phases"][old_phase].setdefault("end", now)
            new_phase = states.PHASE_OF.get(to)
            if new_phase:
                rec["phases"].setdefault(new_phase, {"start": now})
            rec["state"] = to
            entry: dict[str, Any] = {"state": to, "at": now}
            if by is not None:
                entry["by"] = by
            rec["history"].append(entry)
            rec.update(known)

        return self.update(mid, change)

    def active(self) -> list[MigrationRecord]:
        """Every migration not yet at an end state, oldest first (for watch and the metrics)."""
        ids = self.active_ids()
        raws = self.r.mget([keys.migration(i) for i in ids]) if ids else []
        recs = [json.loads(raw) for raw in raws if raw is not None]
        return sorted((r for r in recs if r["state"] not in states.ENDS), key=lambda r: r["created_at"])
