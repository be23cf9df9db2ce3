"""The Python front door: validate a request, take the VM's lease, enqueue.

A request that is refused changes nothing: every check runs before the lease is taken,
and the lease is released again if enqueueing fails.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from workers.coord.admission import Admission, admit_and_send
from workers.coord.locks import LockHeld, VMLocks
from workers.engine.app import app, configure
from workers.hyperv import vm_location
from workers.hyperv.driver import HyperVDriver
from workers.model import config as config_mod
from workers.model import keys, routing, states
from workers.model import options as options_mod
from workers.model.errors import QuickmigError
from workers.model.record import StaleState, Store, new_record

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


class RequestError(QuickmigError):
    """The request cannot be carried out as asked; the message says what to fix."""


@dataclass(frozen=True)
class MigrationRequest:
    vm: str
    source: str
    destination: str
    # raw cutover options (see workers.model.options.parse): max_downtime, on_exceed, max_rounds,
    # not_before, window, keep_source_hours
    options: dict = field(default_factory=dict)


class Producer:
    def __init__(self, cfg: config_mod.Config):
        configure(cfg)
        self.cfg, self.app = cfg, app
        self.store = Store.from_url(cfg.broker_url())
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
        if vm["state"] != "Running":
            raise RequestError(f"VM {req.vm!r} is {vm['state']} on {req.source}; "
                               "quickmig moves running VMs (start it first)")
        return vm

    def enqueue(self, req: MigrationRequest) -> dict:
        try:
            opts = options_mod.parse(**req.options)
        except (options_mod.OptionError, TypeError) as e:
            raise RequestError(str(e)) from None
        vm = self.validate(req)
        rec = new_record(vm=req.vm, vm_id=vm["id"], source=req.source,
                         destination=req.destination, fence=0, options=opts)
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
        try:
            self.store.create(rec)
            # in line for a place on both hosts (workers.coord.admission); the pass starts it now
            # if both have room, else a migration that ends on either host will
            self.admission.wait(rec["id"], req.source, req.destination)
            self.admit()
        except Exception:
            self.admission.release(rec["id"], (req.source, req.destination))
            self.store.delete(rec["id"])
            self.locks.release(vm["id"], rec["id"])
            raise
        return rec

    def admit(self) -> list[str]:
        return admit_and_send(self.admission, self.store,
                              lambda mid: self.app.send_task(routing.SNAPSHOT, args=[mid]))

    def cancel(self, mid: str) -> dict:
        """Roll a migration back before its downtime; refuse (RequestError) once the VM is
        down or already runs on the destination, saying why."""
        try:
            rec = self.store.transition(mid, CANCELLABLE, states.ROLLING_BACK, error="cancelled by request",
                                        cancelled_at=time.time())
        except StaleState as e:
            raise RequestError(f"cannot cancel migration {mid}: {CANCEL_REFUSED.get(e.actual, e.actual)}") from None
        self.admission.withdraw(mid)  # its places, if it has any, are given back when it ends
        # the step now running notices the state change and stops; the rollback waits for it
        self.app.send_task(routing.ROLLBACK, args=[mid])
        return rec

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
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            rec = self.store.get(mid)
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
