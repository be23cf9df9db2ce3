"""The orphan sweep: what a migration left on the hosts after Redis lost its record.

A Redis failover that lost the last writes, or a FLUSHALL, can leave a migration's work on
the hosts with no record to say so: quickmig's checkpoint on a running source VM, a source
VM saved for a switchover, files copied to the destination, a VM imported there. The
reconciler cannot see those (it walks records), so beat sends this sweep every
`[reconciler] orphan_sweep_every_s`. It reads every host (`list_vms`: each VM's checkpoints
named `quickmig-<id>`; the markers in `quickmig-markers`, workers.engine.markers) and acts
only on what belongs to a migration with no record, older than `orphan_grace_s`, holding
the VM's lease while it does (a new migration of that VM keeps it away):

- On the destination (a marker): a VM there whose configuration is one the marker lists
  was imported by quickmig. Running, it is the VM now (the switchover reached its start):
  kept, our checkpoint merged. Not running, it was never verified: removed. Then the
  marker's files are deleted, except those a registered VM still uses (delete_files keeps
  them), and the marker.
- On the source (our checkpoint): running, the checkpoint is merged. Saved by us for a
  switchover: resumed and merged only when no other host has that VM registered; where
  one does, it stays off and is reported (never two running). Off: reported, left alone.

Every finding goes to `quickmig orphans` (a Redis list), a metric and the events stream.
"""
from __future__ import annotations

import json
import logging
import time
import uuid

from workers.coord.locks import LockHeld
from workers.engine import context, markers
from workers.engine.app import app
from workers.hyperv.errors import HyperVError
from workers.model import hostpaths, keys, routing, states
from workers.obs import metrics
from workers.smb.errors import SmbError
from workers.steps.checkpoint import snapshot_name

log = logging.getLogger("quickmig.orphans")

PREFIX = snapshot_name("")
OWNER = "orphan-sweep:"
FINDINGS_KEPT = 500
ENDED = (states.COMPLETED, states.ROLLED_BACK)


class _Sweep:
    def __init__(self) -> None:
        self.cfg = context.config()
        self.r = context.store().r
        self.locks = context.locks()
        self.now = time.time()
        self.grace = self.cfg.reconciler.orphan_grace_s
        self.findings: list[dict] = []
        self.vms: dict[str, list[dict]] = {}
        self.changed: set[str] = set()  # hosts whose VMs a destination's cleaning changed

    # -- what the hosts have -----------------------------------------------------------
    def look(self, host: str) -> None:
        self.vms[host] = context.driver(host).run("list_vms", {})["vms"]

    def registered(self, vm_id: str, but: str | None = None) -> dict[str, str]:
        """Host -> state of every host (but `but`) that has this VM id registered."""
        return {h: v["state"] for h, vms in self.vms.items() if h != but
                for v in vms if v["id"].lower() == vm_id.lower()}

    def has_record(self, mid: str) -> str | None:
        raw = self.r.get(keys.migration(mid))
        return json.loads(raw)["state"] if raw else None

    def found(self, host: str, kind: str, action: str, *, mid: str, vm_id: str, vm: str = "", note: str = "") -> None:
        f = {"at": round(time.time(), 3), "host": host, "kind": kind, "action": action, "mid": mid,
             "vm_id": vm_id, "vm": vm, "note": note}
        self.findings.append(f)
        (log.warning if action in ("reported", "refused") else log.info)(
            "orphan %s on %s (migration %s, VM %s): %s%s", kind, host, mid, vm or vm_id, action,
            f": {note}" if note else "")
        metrics.ORPHANS.labels(kind=kind, action=action).inc()

    def held(self, vm_id: str, mid: str):
        """The VM's lease for this sweep, or None when a migration holds it (it is theirs)."""
        try:
            return self.locks.acquire(vm_id, OWNER + mid)
        except LockHeld:
            return None

    def fence(self, vm_id: str, mid: str, token: int) -> None:
        self.locks.check(vm_id, OWNER + mid, token)

    # -- a destination's marker ----------------------------------------------------------
    def destination(self, host: str, doc: dict) -> None:
        mid, vm_id = doc["mid"], doc["vm_id"]
        state = self.has_record(mid)
        if state in ENDED:
            markers.remove({"id": mid, "destination": host})  # its end could not remove it
            self.found(host, "marker", "removed", mid=mid, vm_id=vm_id, vm=doc["vm"],
                       note=f"the migration is {state}")
            return
        if state is not None or self.now - float(doc.get("written_at", self.now)) < self.grace:
            return
        token = self.held(vm_id, mid)
        if token is None:
            return
        try:
            self._clean_destination(host, doc, token)
        finally:
            self.locks.release(vm_id, OWNER + mid)

    def _clean_destination(self, host: str, doc: dict, token: int) -> None:
        mid, vm_id, vm = doc["mid"], doc["vm_id"], doc["vm"]
        drv, roots = context.driver(host), self.cfg.host(host).roots
        files = [f for f in doc["files"] if self._confined(host, f)]
        if vm_id.lower() in (v["id"].lower() for v in self.vms.get(host, [])):
            self.changed.add(host)  # a VM removed or a checkpoint merged: the source pass must see it
            info = drv.run("describe_vm", {"vm_id": vm_id})["vm"]
            ours = any(hostpaths.same(info.get("config_path") or "", f) for f in files)
            if ours and info["state"] == "Running":
                self._merge(host, info, mid, token, "destination VM", "kept running",
                            "the switchover had started it; our checkpoint merged")
                files = []  # they are the VM's now
            elif ours:
                self.fence(vm_id, mid, token)
                drv.run("remove_vm", {"vm_id": vm_id, "config_path": info["config_path"], "turn_off": True,
                                      "delete_paths": files, "roots": roots})
                self.found(host, "destination VM", "removed", mid=mid, vm_id=vm_id, vm=vm,
                           note=f"imported by quickmig and never verified ({info['state']})")
        self.fence(vm_id, mid, token)
        out = drv.run("delete_files", {"paths": [*files, markers.host_path(host, mid)], "roots": roots})
        kept = [f"{k['path']} (used by {k['used_by']})" for k in out.get("kept", [])]
        self.found(host, "copied files", "deleted", mid=mid, vm_id=vm_id, vm=vm,
                   note=f"{len(out.get('deleted', []))} deleted" + (f"; kept {', '.join(kept)}" if kept else ""))

    def _confined(self, host: str, path: str) -> bool:
        try:
            self.cfg.host(host).confine(path)
            return True
        except hostpaths.HostPathError:
            return False

    # -- a source's checkpoint --------------------------------------------------------
    def source(self, host: str, vm: dict, snap: dict) -> None:
        mid = snap["name"][len(PREFIX):]
        if self.has_record(mid) is not None or self.now - float(snap["created"]) < self.grace:
            return
        token = self.held(vm["id"], mid)
        if token is None:
            return
        try:
            self._clean_source(host, vm, mid, token)
        finally:
            self.locks.release(vm["id"], OWNER + mid)

    def _clean_source(self, host: str, vm: dict, mid: str, token: int) -> None:
        vm_id, drv = vm["id"], context.driver(host)
        elsewhere = self.registered(vm_id, but=host)
        running = [h for h, st in elsewhere.items() if st == "Running"]
        if vm["state"] == "Running":
            if running:
                self.found(host, "source VM", "reported", mid=mid, vm_id=vm_id, vm=vm["name"],
                           note=f"runs here and on {', '.join(running)}: look at both now")
                return
            self._merge(host, vm, mid, token, "checkpoint", "merged", "on a running VM")
        elif vm["state"] == "Saved" and not elsewhere:
            self.fence(vm_id, mid, token)
            info = drv.run("start_vm", {"vm_id": vm_id})["vm"]
            self.found(host, "source VM", "resumed", mid=mid, vm_id=vm_id, vm=vm["name"],
                       note="saved for a switchover and registered nowhere else; its automatic start "
                            "action may still be Nothing (the switchover set it)")
            self._merge(host, info, mid, token, "checkpoint", "merged", "after the resume")
        else:
            where = f"registered on {', '.join(f'{h} ({st})' for h, st in elsewhere.items())}" if elsewhere else \
                "quickmig does not start a VM it did not save"
            self.found(host, "source VM", "reported", mid=mid, vm_id=vm_id, vm=vm["name"],
                       note=f"{vm['state']} with quickmig's checkpoint, left as it is: {where}")

    def _merge(self, host: str, vm: dict, mid: str, token: int, kind: str, action: str, note: str) -> None:
        ids = [s["id"] for s in vm.get("quickmig_checkpoints", vm.get("snapshots", []))
               if s["name"] == snapshot_name(mid)]
        if ids:
            self.fence(vm["id"], mid, token)
            context.driver(host).run("remove_snapshots", {"vm_id": vm["id"], "snapshot_ids": ids})
        self.found(host, kind, action, mid=mid, vm_id=vm["id"], vm=vm.get("name", ""), note=note)

    # -- the whole fleet ------------------------------------------------------------------
    def run(self) -> list[dict]:
        docs: dict[str, list[dict]] = {}
        for host in self.cfg.hosts:
            try:
                self.look(host)
                docs[host], unreadable = markers.read_all(host)
            except (HyperVError, SmbError, OSError) as e:
                log.warning("orphan sweep: %s not looked at this time: %s", host, e)
                self.vms.pop(host, None)
                continue
            for name in unreadable:
                self.found(host, "marker", "refused", mid=name, vm_id="",
                           note="not a marker quickmig can read; nothing done")
        for host, found in docs.items():
            for doc in found:
                self._guarded(self.destination, host, doc)
        for host in self.changed & set(self.vms):
            self.look(host)
        for host, vms in list(self.vms.items()):
            for vm in vms:
                for snap in vm.get("quickmig_checkpoints", []):
                    self._guarded(self.source, host, vm, snap)
        return self.findings

    def _guarded(self, fn, host: str, *args) -> None:
        try:
            fn(host, *args)
        except (HyperVError, SmbError, OSError) as e:  # the VM moved meanwhile, a host went away: next sweep
            log.warning("orphan sweep on %s: %s", host, e)


def record(r, findings: list[dict], events_max_entries: int) -> None:
    """Keep the findings for `quickmig orphans` (newest first, bounded) and put them on the
    events stream (`new` = orphan_<action>; the migration id is that of the lost record)."""
    if not findings:
        return
    with r.pipeline() as p:
        for f in findings:
            p.lpush(keys.ORPHANS, json.dumps(f))
            p.xadd(keys.EVENTS, {"id": f["mid"], "vm": f["vm"], "source": f["host"], "destination": f["host"],
                                 "old": "", "new": f"orphan_{f['action']}", "at": repr(f["at"]), "seq": "0",
                                 "by": "orphan-sweep"}, maxlen=events_max_entries, approximate=True)
        p.ltrim(keys.ORPHANS, 0, FINDINGS_KEPT - 1)
        p.execute()


@app.task(name=routing.SWEEP_ORPHANS, ignore_result=True)
def sweep_orphans() -> int:
    """One sweep of the fleet at a time (a lock that outlives a stuck one after a while)."""
    r = context.store().r
    token = uuid.uuid4().hex
    if not r.set(keys.ORPHAN_SWEEP_LOCK, token, nx=True, ex=600):
        return 0
    try:
        findings = _Sweep().run()
        record(r, findings, context.config().events.max_entries)
        return len(findings)
    finally:
        if r.get(keys.ORPHAN_SWEEP_LOCK) == token:
            r.delete(keys.ORPHAN_SWEEP_LOCK)
