"""The Python front door: validate a request, take the VM's lease, enqueue.

A request that is refused changes nothing: every check runs before the lease is taken,
and the lease is released again if enqueueing fails.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import redis

from workers.coord.admission import Admission, admit_and_send
from workers.coord.locks import LockHeld, NotReplicated, VMLocks, replicated
from workers.engine.app import app, configure
from workers.hyperv import vm_location
from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError
from workers.model import config as config_mod
from workers.model import file_plan, hostpaths, keys, network_map, routing, states
from workers.model import options as options_mod
from workers.model.errors import QuickmigError
from workers.model.hostpaths import HostPathError
from workers.model.preflight import saved_memory_bytes
from workers.model.record import CLIENT_OPTIONS, MigrationRecord, StaleState, Store, new_record
from workers.smb import file_copy
from workers.smb.endpoint import SmbEndpoint
from workers.smb.errors import SmbError
from workers.steps import precopy, snapshot

# How long a producer without host credentials waits for a worker to look a VM up.
LOOKUP_WAIT_S = 60.0

# Before the downtime a cancel rolls back; from Save-VM on it would only lengthen it.
CANCELLABLE = {states.QUEUED, states.SNAPSHOTTING, states.COPYING, states.PREPARING}
CANCEL_REFUSED = {
    states.CUTTING_OVER: "it is in its downtime (the VM is saved and moving); stopping now would only "
                         "lengthen the downtime, and it ends by itself: started on the destination "
                         "or rolled back to the source",
    states.FINISHING: "the VM already runs on the destination; only the source's clean-up is left",
    states.ROLLING_BACK: "it is already rolling back",
    states.COMPLETED: "it has already completed",
    states.FAILED: "it has already ended (failed)",
    states.ROLLED_BACK: "it has already been rolled back",
}

# How long an enqueue under Sentinel waits for a replica to confirm its record (a failover
# in progress takes a few seconds) before it refuses the request.
DURABLE_WAIT_S = 10.0


class RequestError(QuickmigError):
    """The request cannot be carried out as asked; the message says what to fix."""


class HostUnreachable(QuickmigError):
    """A host did not answer a look-up (WinRM down, credentials refused)."""


class IdempotencyConflict(QuickmigError):
    """An idempotency key already used for another request, or for one still being decided."""


@dataclass(frozen=True)
class MigrationRequest:
    vm: str
    source: str
    destination: str
    # raw cutover options (see workers.model.options.parse): max_downtime, on_exceed, max_rounds,
    # not_before, window, keep_source_hours, destination_path, storage_map
    options: dict = field(default_factory=dict)

    def digest(self) -> str:
        """What makes two requests the same request (for an idempotency key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


PAGE_SCAN_MAX = 5000
RATE_PAGES = 3  # a dry run looks for measured copy rates in this many pages of the pair's source
# An Idempotency-Key's claim not turned into a migration in this long is taken over: far
# longer than an enqueue (a WinRM look-up on each host, each within 60 s) takes.
IDEMPOTENCY_CLAIM_STALE_S = 900  # index entries one page looks at before it returns with a cursor


class Producer:
    def __init__(self, cfg: config_mod.Config):
        configure(cfg)
        self.cfg, self.app = cfg, app
        self.store = Store(cfg.redis_client(**CLIENT_OPTIONS), cfg.events.max_entries)
        self.locks = VMLocks(self.store.r)
        self.admission = Admission.of(self.store.r, cfg)

    @classmethod
    def from_config(cls, path=None) -> Producer:
        return cls(config_mod.load_config(path))

    def _driver(self, host: str) -> HyperVDriver:
        return HyperVDriver(self.cfg.host(host), self.cfg.credentials(host), default_timeout_s=60)

    def _find_vm(self, req: MigrationRequest) -> dict:
        """Look the VM up on the hosts ourselves if this config holds their credentials,
        else have a worker of the snapshot pool do it (the workers hold them)."""
        if not self.cfg.holds_host_credentials():
            return self._ask_a_worker(req)
        try:
            return vm_location.find_vm(self.cfg.hosts, self._driver, req.vm, req.source)
        except vm_location.LookupRefused as e:
            raise RequestError(str(e)) from None

    def _ask_a_worker(self, req: MigrationRequest) -> dict:
        reply_key = keys.lookup_reply(uuid.uuid4().hex)
        self.app.send_task(routing.LOOKUP_VM, args=[reply_key, req.vm, req.source], expires=LOOKUP_WAIT_S)
        deadline = time.monotonic() + LOOKUP_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            # in slices shorter than the client's socket timeout
            got = self.store.r.blpop([reply_key], timeout=max(1, int(min(left, 20))))
            if got is not None:
                answer = json.loads(got[1])
                if "error" in answer:
                    raise RequestError(answer["error"])
                return answer["vm"]
        raise RequestError(f"no worker of the snapshot pool looked {req.vm!r} up within {LOOKUP_WAIT_S:.0f} s "
                           "(this producer holds no host credentials, so a worker does it): are the workers "
                           "running?")

    def validate(self, req: MigrationRequest) -> dict:
        if not req.vm:
            raise RequestError("VM name is empty")
        for role, host in (("source", req.source), ("destination", req.destination)):
            if host not in self.cfg.hosts:
                known = ", ".join(sorted(self.cfg.hosts))
                raise RequestError(f"unknown {role} host {host!r} (inventory has: {known})")
        if req.source == req.destination:
            raise RequestError(f"source and destination are both {req.source}; choose another destination")
        vm = self._find_vm(req)
        if vm["state"] not in states.MOVABLE_VM_STATES:
            raise RequestError(f"VM {req.vm!r} is {vm['state']} on {req.source}; quickmig moves Running VMs, and "
                               "Off or Saved ones cold (resume or turn it off first)")
        if req.options.get("start") and vm["state"] == "Running":
            raise RequestError(f"--start is for a VM that is Off or Saved, and {req.vm!r} is Running on {req.source} "
                               "(it runs on the destination after the move anyway); drop --start")
        return vm

    @staticmethod
    def _options(req: MigrationRequest) -> dict:
        try:
            return options_mod.parse(**req.options)
        except (options_mod.OptionError, TypeError) as e:
            raise RequestError(str(e)) from None

    def _placed(self, req: MigrationRequest, vm: dict, opts: dict) -> list[dict]:
        """Every file of the VM with where it lands (workers.model.file_plan); a file with no
        reachable destination, or a layout Import-VM -Register would not find, is refused
        here, before anything changes."""
        pm = file_plan.PathMap(self.cfg, req.source, req.destination, options_mod.Options(**opts), vm["path"])
        try:
            files = pm.plan(vm)
        except HostPathError as e:
            raise RequestError(str(e)) from None
        problems = file_plan.layout_problems(vm) + pm.problems(vm)
        if problems:
            raise RequestError(f"{req.vm} cannot be registered on {req.destination} as it would be laid out: "
                               + problems[0])
        return files

    def plan(self, req: MigrationRequest) -> dict:
        """What `migrate --dry-run` shows: the VM and its file plan (each source file, its
        size read over SMB, where it lands), changing nothing anywhere."""
        opts = self._options(req)
        return self._plan(req, opts, self.validate(req))

    def _plan(self, req: MigrationRequest, opts: dict, vm: dict) -> dict:
        files = self._placed(req, vm, opts)
        host = self.cfg.host(req.source)
        ep = SmbEndpoint.for_host(host, self.cfg.credentials(req.source))
        for f in files:
            storage, rel = host.place(f["path"])
            try:
                f["bytes"] = file_copy.file_size(ep.on_share(storage.share), rel)
            except SmbError as e:
                raise RequestError(f"cannot read the size of {f['path']} over SMB: {e}") from None
        switches = network_map.switch_map(self.cfg, req.source, req.destination, options_mod.Options(**opts),
                                          vm.get("switches", []))
        return {"vm": req.vm, "vm_id": vm["id"], "source": req.source, "destination": req.destination,
                "options": opts, "files": files, "switches": switches}

    def dry_run(self, req: MigrationRequest) -> dict:
        """What the migration would do and cost, changing nothing anywhere (no checkpoint, no
        lease, no Redis write): the file plan, the pre-flight's problems (empty: it would pass),
        the bytes the base copy moves, and the copy time and downtime predicted from the rates
        measured on these hosts (the defaults where none are; `measured` names those that were).
        The downtime is the switchover's with the leaf copied down to its header, as pre-copy
        rounds leave it for a guest that writes little: a floor for a busy guest."""
        opts = self._options(req)
        vm = self.validate(req)
        plan = self._plan(req, opts, vm)
        full, found, copy_bytes, isos = self._preflight(req, vm, opts)
        rates = self._measured_rates(req.source, req.destination)
        costs = precopy.remembered_costs(self.store.r, req.source, req.destination)
        sources = {**costs["sources"], "downtime_copy_bps": "this pair's last migration"}
        if not rates["measured"]:
            rate, sources["downtime_copy_bps"] = precopy.downtime_copy({}, costs)
            rates = {**rates, "downtime_copy_bps": rate}
        memory = saved_memory_bytes(full)
        leaf = precopy.CHILD_HEADER_BYTES * len(full["disks"])
        save_s = memory / costs["save_bps"]
        down_copy_s = (memory + leaf + precopy.STATE_FILES_BYTES) / rates["downtime_copy_bps"]
        downtime = precopy.predict_s(memory, leaf, rates["downtime_copy_bps"], costs)
        cold = full["state"] if full["state"] in states.COLD_VM_STATES else None
        if cold:  # a cold move: no Save-VM, no copy while the VM is down
            downtime = save_s = down_copy_s = 0.0
        return {**plan, "cold": cold, "preflight": {"ok": not found, "problems": found},
                "library_isos": isos.library, "ejected_isos": isos.ejects,
                "copy_bytes": copy_bytes, "memory_bytes": memory,
                "predicted_copy_seconds": round(copy_bytes / rates["copy_bps"], 3),
                "predicted_downtime_seconds": round(downtime, 3),
                "downtime_parts": {"save_seconds": round(save_s, 3), "copy_seconds": round(down_copy_s, 3),
                                   "register_start_seconds": round(costs["register_start_s"], 3)},
                "rates": {"copy_bps": round(rates["copy_bps"]), "downtime_copy_bps": round(rates["downtime_copy_bps"]),
                          "save_bps": round(costs["save_bps"]), "register_start_s": costs["register_start_s"],
                          "measured": sorted(rates["measured"] + costs["measured"]),
                          "measured_by": rates["measured_by"], "sources": sources}}

    def _preflight(self, req: MigrationRequest, vm: dict,
                   opts: dict) -> tuple[dict, list[str], int, file_plan.IsoCheck]:
        """The workers' pre-flight (look-ups only), run from here with this config's host
        credentials: the VM's pre-flight facts, the problems found, the bytes the base copy
        moves, the ISO images' fate."""
        rec = {"source": req.source, "destination": req.destination, "options": opts, "vm": req.vm}
        try:
            full = self._driver(req.source).run("describe_vm", {"vm_id": vm["id"], "preflight": True})["vm"]
            found, _, copy_bytes, isos = snapshot.preflight_problems(
                self.cfg, rec, full, self._driver(req.source), self._driver(req.destination),
                SmbEndpoint.for_host(self.cfg.host(req.source), self.cfg.credentials(req.source)))
        except (HyperVError, SmbError) as e:
            raise RequestError(f"cannot run the pre-flight of {req.vm!r}: {e}") from None
        return full, found, copy_bytes, isos

    def _measured_rates(self, source: str, destination: str) -> dict:
        """The copy rates the newest migration from `source` to `destination` that measured
        them saw (its pre-copy gate records them), else the defaults."""
        cursor = None
        for _ in range(RATE_PAGES):
            recs, cursor = self.page(limit=100, cursor=cursor, host=source)
            for r in recs:
                if r["destination"] == destination and r.get("copy_bps") and r.get("downtime_copy_bps"):
                    return {"copy_bps": float(r["copy_bps"]), "downtime_copy_bps": float(r["downtime_copy_bps"]),
                            "measured": ["copy_bps", "downtime_copy_bps"], "measured_by": r["id"]}
            if cursor is None:
                break
        return {"copy_bps": precopy.DEFAULT_COPY_BPS, "downtime_copy_bps": precopy.DEFAULT_COPY_BPS,
                "measured": [], "measured_by": None}

    def _isos_checked(self, req: MigrationRequest, vm: dict, opts: dict, ask_destination: bool = True) -> None:
        """The ISO images quickmig does not copy (workers.model.file_plan.iso_check), refused
        here, before anything changes, where this producer can tell: a local image outside
        every storage folder always; a library image (UNC path) the destination cannot reach
        when it holds the hosts' credentials and `ask_destination` (else the pre-flight asks
        the destination, in the host_info call it makes anyway)."""
        src = self.cfg.host(req.source)
        unc = [p for p in file_plan.library_isos(src, vm) if hostpaths.unc_problem(p) is None]
        reachable = {p: True for p in unc}
        if unc and ask_destination and self.cfg.holds_host_credentials():
            try:
                info = self._driver(req.destination).run("host_info", {"unc_paths": unc})
            except HyperVError as e:
                raise RequestError(f"cannot ask {req.destination} which ISO images it reaches: {e}") from None
            reachable = file_plan.unc_reachable(info, unc)
        found = file_plan.iso_check(src, vm, source=req.source, destination=req.destination, reachable=reachable,
                                    eject=bool(opts.get("eject_unmovable_isos"))).problems
        if found:
            raise RequestError(found[0])

    def enqueue(self, req: MigrationRequest, requester: str | None = None, preflight: bool = False) -> dict:
        """Queue the migration. `preflight`: where this config holds the hosts' credentials, run
        the workers' whole pre-flight first and refuse here, before anything is written, what it
        would refuse (the CLI asks for it: a refusal exits 2 instead of ending rolled_back).
        The workers run it again before the checkpoint: the hosts may change in between."""
        opts = self._options(req)
        vm = self.validate(req)
        self._placed(req, vm, opts)
        preflight = preflight and self.cfg.holds_host_credentials()
        # a pre-flight about to run asks the destination which library images it reaches: one
        # host_info call, not two (each a powershell.exe on a real host)
        self._isos_checked(req, vm, opts, ask_destination=not preflight)
        if preflight:
            found = self._preflight(req, vm, opts)[1]
            if found:
                raise RequestError("pre-flight refused: " + "; ".join(found))
        rec = new_record(vm=req.vm, vm_id=vm["id"], source=req.source,
                         destination=req.destination, fence=0, options=opts, requester=requester)
        try:
            token = self.locks.acquire(vm["id"], rec["id"])
        except LockHeld as e:
            try:
                other = self.store.get(e.holder)
                detail = f"migration {e.holder}, {other['state']}"
            except Exception:  # noqa: BLE001 - the holder's record is only for the message
                detail = f"migration {e.holder}"
            raise RequestError(f"VM {req.vm!r} is already being migrated ({detail}); "
                               "wait for it to end") from None
        rec["fence"] = token
        event_id = None
        try:
            event_id = self.store.create(rec)
            # in line for a place on both hosts (workers.coord.admission); the pass starts it now
            # if both have room, else a migration that ends on either host will
            self.admission.wait(rec["id"], req.source, req.destination)
            self.admit()
            self._durable(rec["id"])
        except Exception:
            self.admission.release(rec["id"], (req.source, req.destination))
            self.store.delete(rec["id"], event_id)
            self.locks.release(vm["id"], rec["id"])
            raise
        return rec

    def _durable(self, mid: str) -> None:
        """Under Sentinel, a migration's id goes back to its caller only once a replica holds
        its record: a failover keeps only what reached the replica, and a caller must never
        hold the id of a migration that then never existed. Not confirmed: nothing stays queued."""
        if not self.cfg.redis_sentinels():
            return
        try:
            replicated(self.store.r, 1, keys.replication_probe(mid), wait_s=DURABLE_WAIT_S)
        except NotReplicated as e:
            raise RequestError(f"Redis did not confirm the request on a replica ({e}); nothing was queued: "
                               "try again once Redis's replica is back") from None

    def enqueue_once(self, req: MigrationRequest, key: str, caller: str,
                     requester: str | None = None) -> tuple[dict, bool]:
        """Enqueue under an idempotency key of `caller`'s: the same key and request again
        returns the migration the first one made (and False: not new); the same key with
        another request, or while the first is still being decided, is an
        IdempotencyConflict. A refused request frees its key."""
        k = keys.idempotency(caller, key)
        digest = req.digest()
        claim = json.dumps({"digest": digest, "migration": None, "at": time.time()})
        if not self.store.r.set(k, claim, nx=True, ex=keys.IDEMPOTENCY_TTL_S):
            raw = self.store.r.get(k)
            held = json.loads(raw or claim)
            if held["digest"] != digest:
                raise IdempotencyConflict("this Idempotency-Key was already used for another request; "
                                          "use a new key for a new request")
            if held["migration"] is not None:
                return self.store.get(held["migration"]), False
            # a claim far older than any enqueue takes was left by a process that died deciding it
            # (if it died holding the VM's lease, this attempt is refused as "already being migrated")
            stale = time.time() - held.get("at", 0) > IDEMPOTENCY_CLAIM_STALE_S
            if not (stale and self._take_over(k, raw, claim)):
                raise IdempotencyConflict("a request with this Idempotency-Key is still being decided; "
                                          "retry in a moment")
        try:
            rec = self.enqueue(req, requester)
        except BaseException:
            self.store.r.delete(k)
            raise
        self.store.r.set(k, json.dumps({"digest": digest, "migration": rec["id"]}), ex=keys.IDEMPOTENCY_TTL_S)
        return rec, True

    def _take_over(self, k: str, seen: str | None, claim: str) -> bool:
        """Replace the claim `seen` by ours, unless someone else changed it first."""
        with self.store.r.pipeline() as p:
            try:
                p.watch(k)
                if p.get(k) != seen:
                    return False
                p.multi()
                p.set(k, claim, ex=keys.IDEMPOTENCY_TTL_S)
                p.execute()
                return True
            except redis.WatchError:
                return False

    def page(self, *, limit: int = 50, cursor: str | None = None, state: str | None = None,
             vm: str | None = None, host: str | None = None) -> tuple[list[MigrationRecord], str | None]:
        """Migrations newest first, those matching every filter given (`host`: source or
        destination), at most `limit`; and the cursor of the next page (None: no more).
        The cursor is the creation time and id of the last migration looked at, so
        migrations created meanwhile never shift a page; a page looks at no more than
        PAGE_SCAN_MAX migrations, so a rare filter may give a short page with a cursor."""
        start: tuple[float, str] | None = None
        if cursor is not None:
            score, _, after = cursor.partition(":")
            try:
                start = (float(score), after)
            except ValueError:
                raise RequestError(f"cursor {cursor!r} is not one this API gave out") from None
        out: list[MigrationRecord] = []
        looked = 0
        index = self._index_after(start)
        while True:
            batch = list(itertools.islice(index, 100))
            if not batch:
                return out, None
            raws = self.store.r.mget([keys.migration(m) for m, _ in batch])
            for (mid, score), raw in zip(batch, raws, strict=True):
                looked += 1
                rec = json.loads(raw) if raw is not None else None
                if rec is not None and ((state is None or rec["state"] == state) and (vm is None or rec["vm"] == vm)
                                        and (host is None or host in (rec["source"], rec["destination"]))):
                    out.append(rec)
                if len(out) >= limit or looked >= PAGE_SCAN_MAX:
                    return out, f"{score!r}:{mid}"

    def _index_after(self, start: tuple[float, str] | None) -> Iterator[tuple[str, float]]:
        """(id, creation time) of every migration after `start` in the index, newest first;
        equal times in descending id order, as Redis orders them."""
        r = self.store.r
        top = "+inf"
        while True:
            if start is not None:
                score, mid = start
                for m, sc in r.zrevrangebyscore(keys.MIGRATIONS_INDEX, score, score, withscores=True):
                    if m < mid:
                        yield m, sc
                top = f"({score!r}"
            batch = r.zrevrangebyscore(keys.MIGRATIONS_INDEX, top, "-inf", start=0, num=500, withscores=True)
            if not batch:
                return
            yield from batch
            last_id, last_score = batch[-1]
            start = (last_score, last_id)

    def admit(self) -> list[str]:
        return admit_and_send(self.admission, self.store,
                              lambda mid: self.app.send_task(routing.SNAPSHOT, args=[mid]))

    def cancel(self, mid: str, requester: str | None = None) -> dict:
        """Roll a migration back before its downtime; refuse (RequestError) once the VM is
        down or already runs on the destination, saying why."""
        try:
            rec = self.store.transition(mid, CANCELLABLE, states.ROLLING_BACK, by=requester,
                                        error="cancelled by request" + (f" of {requester}" if requester else ""),
                                        cancelled_at=time.time())
        except StaleState as e:
            raise RequestError(f"cannot cancel migration {mid}: {CANCEL_REFUSED.get(e.actual, e.actual)}") from None
        self.admission.withdraw(mid)  # its places, if it has any, are given back when it ends
        # the step now running notices the state change and stops; the rollback waits for it
        self.app.send_task(routing.ROLLBACK, args=[mid])
        return rec

    def host_vms(self, host: str) -> list[dict]:
        """Every VM on `host` (id, name, state), as Hyper-V lists them now; RequestError if the
        host is not in the inventory or does not answer."""
        if host not in self.cfg.hosts:
            raise RequestError(f"unknown host {host!r} (inventory has: {', '.join(sorted(self.cfg.hosts))})")
        try:
            return self._driver(host).run("list_vms", {})["vms"]
        except HyperVError as e:
            raise HostUnreachable(f"cannot list the VMs of {host}: {e}") from None

    def host_health(self, host: str) -> dict:
        """Whether `host` answers over WinRM now, and the free space of each of its storage
        folders (host_info, one look-up per folder, read-only); `error` says why it did not."""
        h = self.cfg.host(host)
        free: dict[str, int] = {}
        t0 = time.time()
        try:
            for s in h.storage:
                info = self._driver(host).run("host_info", {"vm_root": s.path})
                free[s.name] = int(info["vm_root_free_bytes"])
        except (HyperVError, QuickmigError, OSError) as e:
            return {"reachable": False, "error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                    "free_bytes": free, "checked_at": t0}
        return {"reachable": True, "error": None, "free_bytes": free, "checked_at": t0,
                "answered_in_seconds": round(time.time() - t0, 3)}

    def host_load(self) -> dict[str, dict]:
        """Per host of the inventory: its limits and what holds them now (from Redis)."""
        out = {}
        now = time.time()
        for name, h in sorted(self.cfg.hosts.items()):
            with self.store.r.pipeline(transaction=False) as p:
                p.scard(keys.admitted(name))
                p.zcount(keys.copy_slots("read", name), now, "+inf")
                p.zcount(keys.copy_slots("write", name), now, "+inf")
                migrations, reading, writing = p.execute()
            out[name] = {"migrations": migrations, "max_migrations": h.max_migrations,
                         "copies_reading": reading, "copies_writing": writing, "max_copies": h.max_copies}
        return out

    def get(self, mid: str) -> dict:
        return self.store.get(mid)

    def note_waiting(self, recs: list[dict]) -> list[dict]:
        """Add `waiting` (why it is not started yet) to each queued record still in line."""
        for mid, why in self.admission.reasons(recs).items():
            next(r for r in recs if r["id"] == mid)["waiting"] = why
        return recs

    def list(self, limit: int = 100) -> list[dict]:
        return self.store.recent(limit)

    def wait(self, mid: str, timeout_s: float | None = None, poll_s: float = 0.3, on_change=None) -> dict:
        return follow(self.store.get, mid, timeout_s, poll_s, on_change)


def follow(get: Callable[[str], dict], mid: str, timeout_s: float | None, poll_s: float,
           on_change: Callable[[dict], object] | None = None) -> dict:
    """Read migration `mid` with `get` every `poll_s` until it ends; returns its last record.
    `on_change(record)` at each new state; TimeoutError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = None
    while True:
        rec = get(mid)
        if on_change and rec["state"] != last:
            on_change(rec)
        last = rec["state"]
        if rec["state"] in states.ENDS:
            return rec
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"migration {mid} still {rec['state']} after {timeout_s}s")
        time.sleep(poll_s)


def enqueue_migration(vm: str, source: str, destination: str, *, config=None, **options) -> dict:
    """Validate and enqueue one migration; returns the record as queued. `options`: see
    workers.model.options.parse (max_downtime, on_exceed, max_rounds, not_before, window, keep_source_hours)."""
    return Producer.from_config(config).enqueue(MigrationRequest(vm, source, destination, options))


def cancel_migration(mid: str, *, config=None) -> dict:
    """Cancel a migration before its downtime; returns the record, now rolling back."""
    return Producer.from_config(config).cancel(mid)


def get_migration(mid: str, *, config=None) -> dict:
    return Producer.from_config(config).get(mid)


def list_migrations(*, config=None, limit: int = 100) -> list[dict]:
    return Producer.from_config(config).list(limit)


def wait_for(mid: str, *, config=None, timeout_s: float | None = None) -> dict:
    return Producer.from_config(config).wait(mid, timeout_s)
