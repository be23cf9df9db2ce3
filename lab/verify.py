"""Check one lab VM after (or during) migrations: where it is, and that no write and no memory was lost.

`verify_vm(lab_dir, name)` reads, without talking to any process (so it works while a host
is down): every host's registry `DIR/hosts/<h>/emulator/state.json` (hosts listed in
`DIR/quickmig.toml`), the guest journal `DIR/guests/<vm_id>.journal` and the disk chain on
the host that holds the VM. It returns

    {"vm": name, "vm_id": id|None, "running_on": [hosts], "state_by_host": {host: state},
     "integrity": "ok" | "<what is missing or wrong>", "writes_checked": int,
     "host": the host whose disks were checked, "disks": file disks there,
     "checkpoints": [names from the root of the checkpoint tree to the current one, there],
     "adapters": [{"switch", "legacy", "vlan_id", "static_mac"} of each network adapter, there],
     "problems": [str, ...],
     "overlaps": [moments it started on one host while another still ran it]}

and checks, in that order:
- exactly one host has the VM registered, and at most one runs it;
- the hosts' start/stop events never show it running on two hosts at once (lab/history.py);
- the journal tells one consistent story: acknowledged seqs strictly increase by one; every
  `start resumed_from=N` after a `save counter=N` resumes exactly N (the memory state came
  back), after a power-off the start is cold, nobody starts the VM while it runs elsewhere,
  a save records the last acknowledged write; gaps are allowed only across a `recover`
  (the emulator restarted; the writer continues after the highest record on disk);
- every acknowledged seq is a valid record (magic, CRC, VM id) in the disk chain of the host
  where the VM runs now (or sits Saved/Off), with no duplicate records;
- a Saved VM's .vmrs holds the counter of the last save;
- every checkpoint has its files there, and its disks are links of the VM's chains now, in
  the order the checkpoints were taken (`_check_checkpoints`);
- each network adapter keeps the type, VLAN and static MAC address it was created with
  (`_check_adapters`).
The journal is read before the disks (a write is on the disk before it is acknowledged), and
a running VM is checked up to three times, so a checkpoint or merge racing the check is not
reported as a loss.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lab import history
from lab.emulator import disk
from lab.emulator.errors import OpError
from lab.emulator.hostpaths import HostPaths, for_host
from lab.emulator.vm import adapters_of
from workers.model.config import load_config

MAX_LISTED = 5


def _load_states(lab_dir: Path, hosts: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for h in hosts:
        try:
            doc = json.loads((lab_dir / "hosts" / h / "emulator" / "state.json").read_text())
            out[h] = [v for v in doc.get("vms", []) if isinstance(v, dict)]
        except (FileNotFoundError, json.JSONDecodeError):
            out[h] = []
    return out


def parse_journal(path: Path) -> list[tuple]:
    """Entries: ("w", seq) | (kind, fields: dict) for start/save/stop/recover/error lines."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # a line still being written
    out: list[tuple] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.isdigit():
            out.append(("w", int(line)))
            continue
        kind, _, rest = line.partition(" ")
        fields = {}
        for tok in rest.split():
            k, sep, v = tok.partition("=")
            if sep:
                fields[k] = v
        if kind == "error":
            fields["text"] = rest
        out.append((kind, fields))
    return out


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _fmt(seqs) -> str:
    seqs = sorted(seqs)
    shown = ", ".join(str(s) for s in seqs[:MAX_LISTED])
    return shown + (f", ... ({len(seqs)} in all)" if len(seqs) > MAX_LISTED else "")


class _Journal:
    """Replays a guest's journal line by line, noting every way it breaks the story of one
    VM that is never lost: writes acknowledged in order without gaps, one host at a time,
    and every start resuming where the last save (or the disk, after a power-off) left it."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.acked: list[int] = []
        self.seen: set[int] = set()
        self.running: str | None = None
        self.expect: int | str | None = None  # counter after a save, "cold" after a power-off
        self.last = 0
        self.next_seq: int | None = None

    def write(self, seq: int) -> None:
        if seq in self.seen:
            self.problems.append(f"seq {seq} acknowledged twice (two writers?)")
        elif seq <= self.last:
            self.problems.append(f"seq {seq} acknowledged after {self.last} (the counter went backwards)")
        elif self.next_seq is not None and seq != self.next_seq:
            self.problems.append(f"first write after a start/recover was {seq}, expected {self.next_seq}")
        elif self.next_seq is None and seq != self.last + 1:
            self.problems.append(f"gap in acknowledged writes: {seq} after {self.last}")
        if self.running is None:
            self.problems.append(f"seq {seq} acknowledged while the journal says the VM was not running")
        self.seen.add(seq)
        self.acked.append(seq)
        self.last = max(self.last, seq)
        self.next_seq = None

    def start(self, host: str, val: dict) -> None:
        resumed = val.get("resumed_from")
        if self.running is not None:
            self.problems.append(f"started on {host} while running on {self.running}")
        if resumed == "cold":
            self._cold_boot(host, _int(val.get("disk_seq")))
        else:
            self._resume(host, resumed)
        self.running, self.expect = host, None

    def _cold_boot(self, host: str, disk_seq: int | None) -> None:
        if isinstance(self.expect, int):
            self.problems.append(f"cold boot on {host} after save counter={self.expect}: the saved memory was lost")
        self.next_seq = (disk_seq if disk_seq is not None else self.last) + 1
        if disk_seq is not None and disk_seq < self.last:
            self.problems.append(f"cold boot on {host} found records only up to {disk_seq}, "
                                 f"but {self.last} was acknowledged")

    def _resume(self, host: str, resumed: object) -> None:
        n = _int(resumed)
        if n is None:
            self.problems.append(f"unreadable start line on {host}: resumed_from={resumed}")
        elif isinstance(self.expect, int) and n != self.expect:
            self.problems.append(f"start on {host} resumed_from={n} but the last save had counter={self.expect}")
        elif self.expect == "cold":
            self.problems.append(f"start on {host} resumed from memory ({n}) after a power-off")
        elif self.expect is None and self.running is None and self.acked:
            self.problems.append(f"start on {host} resumed_from={n} without a save before it")
        self.next_seq = (n if n is not None else self.last) + 1

    def save(self, host: str, val: dict) -> None:
        n = _int(val.get("counter"))
        if self.running is None:
            self.problems.append(f"save on {host} while the VM was not running")
        elif self.running != host:
            self.problems.append(f"save on {host} while running on {self.running}")
        if n != self.last:
            self.problems.append(f"save on {host} recorded counter={n}, "
                                 f"but the last acknowledged write was {self.last}")
        self.running, self.expect = None, n

    def stop(self, host: str, val: dict) -> None:
        self.running, self.expect = None, "cold"

    def recover(self, host: str, val: dict) -> None:
        n = _int(val.get("resumed_from"))
        if self.running is not None and self.running != host:
            self.problems.append(f"recovered on {host} while running on {self.running}")
        if n is None or n < self.last:
            self.problems.append(f"recover on {host} resumed_from={n} below the last acknowledged write {self.last}")
        self.next_seq = (n if n is not None else self.last) + 1
        self.running = host

    def error(self, host: str, val: dict) -> None:
        self.problems.append(f"guest write error on {host}: {val.get('text', '')[:200]}")


def check_journal(entries: list[tuple]) -> tuple[list[int], list[str], dict]:
    """(acknowledged seqs, problems, final story {"running_host", "expect_resume"})."""
    j = _Journal()
    events = {"start": j.start, "save": j.save, "stop": j.stop, "recover": j.recover, "error": j.error}
    for kind, val in entries:
        if kind == "w":
            j.write(val)
        elif kind in events:
            events[kind](val.get("host", "?"), val)
        else:
            j.problems.append(f"unknown journal line kind {kind!r}")
    return j.acked, j.problems, {"running_host": j.running, "expect_resume": j.expect}


def _holders(lab_dir: Path, cfg, name: str) -> dict[str, dict[str, dict]]:
    """VM id -> {host: VMInfo} for every VM called `name` (or with that id) on any host."""
    by_id: dict[str, dict[str, dict]] = {}
    for h, vms in _load_states(lab_dir, cfg.hosts).items():
        for v in vms:
            if v.get("name") == name or v.get("id") == name.lower():
                by_id.setdefault(v["id"], {})[h] = v
    return by_id


def _check_placement(result: dict, holders: dict[str, dict], problems: list[str]) -> None:
    result["state_by_host"] = {h: v.get("state") for h, v in holders.items()}
    result["running_on"] = [h for h, v in holders.items() if v.get("state") == "Running"]
    if len(holders) > 1:
        problems.append("registered on " + ", ".join(f"{h} ({v.get('state')})" for h, v in holders.items())
                        + ": exactly one host must have it")
    if len(result["running_on"]) > 1:
        problems.append(f"running on {len(result['running_on'])} hosts at once: {', '.join(result['running_on'])}")


def _check_story(home: str, rec: dict, story: dict, problems: list[str]) -> None:
    """The journal's last word agrees with what the host reports."""
    if rec.get("state") == "Running" and story["running_host"] not in (None, home):
        problems.append(f"the journal says the guest last started on {story['running_host']}, "
                        f"but {home} reports it Running")
    if rec.get("state") != "Running" and story["running_host"] is not None:
        problems.append(f"the journal says the guest is running on {story['running_host']}, "
                        f"but {home} reports it {rec.get('state')}")


def _disk_records(home: str, rec: dict, vm_id: str, paths: HostPaths, problems: list[str]) -> list[list[int]]:
    """Every record the guest wrote, read from each virtual disk's whole chain on `home`:
    one list per file disk, in the VM's order."""
    per_disk: list[list[int]] = []
    for d in rec.get("disks", []):
        if d.get("passthrough") or d.get("disk_number") is not None:
            continue  # a physical disk: the guest writer never writes to it
        seqs: list[int] = []
        per_disk.append(seqs)
        try:
            chain = disk.read_chain(d["path"], paths.local)
        except FileNotFoundError as e:
            problems.append(f"disk chain of {d['path']} on {home} is incomplete: {e.args[0]} is missing")
            continue
        except (disk.DiskFormatError, OpError) as e:
            problems.append(f"disk chain of {d['path']} on {home} is broken: {e}")
            continue
        for link in reversed(chain):
            scan = disk.scan_records(link.local)
            seqs.extend(scan.seqs)
            if scan.bad:
                problems.append(f"{len(scan.bad)} damaged records in {link.host_path}")
            other = scan.vm_ids - {vm_id}
            if other:
                problems.append(f"{link.host_path} holds records of other VMs: {', '.join(sorted(other))}")
    return per_disk


def _check_each_disk(home: str, rec: dict, per_disk: list[list[int]], acked: list[int],
                     problems: list[str]) -> None:
    """The guest writes record `seq` to its file disk number (seq - 1) % n (lab/emulator/
    guest.py): every acknowledged write must be on that disk's chain, so a disk left behind,
    copied stale or re-parented wrong is named."""
    files = [d for d in rec.get("disks", []) if not d.get("passthrough") and d.get("disk_number") is None]
    n = len(per_disk)
    for k, seqs in enumerate(per_disk):
        have = set(seqs)
        missing = [s for s in acked if (s - 1) % n == k and s not in have]
        if missing:
            problems.append(f"{len(missing)} acknowledged writes missing from disk {k} ({files[k]['path']}) on "
                            f"{home}: {_fmt(missing)}")


def _check_disks(home: str, disk_seqs: list[int], acked: list[int], problems: list[str]) -> None:
    on_disk = set(disk_seqs)
    if len(on_disk) != len(disk_seqs):
        dups = {s for s in disk_seqs if disk_seqs.count(s) > 1} if len(disk_seqs) < 200000 else set()
        problems.append(f"duplicate records on disk on {home}: {_fmt(dups) if dups else 'several'}")
    missing = [s for s in acked if s not in on_disk]
    if missing:
        problems.append(f"{len(missing)} acknowledged writes missing from the disk chain on {home}: {_fmt(missing)}")


def _check_checkpoints(home: str, rec: dict, vm_id: str, paths: HostPaths, problems: list[str]) -> list[str]:
    """The VM's checkpoint tree on `home`, from the root to the current one (their names),
    checking every checkpoint: each of its files is there, a kept memory is this VM's, and
    each of its disks is a link of that disk's chain now, deeper than the disk of the
    checkpoint taken after it (so the tree kept its order and every disk was re-pointed)."""
    snaps = sorted((s for s in rec.get("snapshots", []) if isinstance(s, dict)), key=lambda s: s.get("created", 0))
    files = [d for d in rec.get("disks", []) if not d.get("passthrough") and d.get("disk_number") is None]
    chains: list[list[str]] = []
    for d in files:
        try:
            chains.append([link.host_path.lower() for link in disk.read_chain(d["path"], paths.local)])
        except (FileNotFoundError, disk.DiskFormatError, OpError):
            chains.append([])  # _disk_records names it
    depth = [len(c) for c in chains]
    for s in snaps:
        label = f"checkpoint {s.get('name')!r}"
        for hp in s.get("files", []):
            try:
                local = paths.local(hp)
            except OpError as e:
                problems.append(f"{label}: {hp} is not a path of {home}: {e}")
                continue
            if not local.is_file():
                problems.append(f"{label}: {hp} is missing on {home}")
            elif hp.lower().endswith(".vmrs"):
                try:
                    if disk.read_vmrs(local)["vm_id"] != vm_id:
                        problems.append(f"{label}: its memory {hp} belongs to another VM")
                except (OSError, disk.DiskFormatError) as e:
                    problems.append(f"{label}: its memory {hp} is unreadable: {e}")
        if len(s.get("disks", [])) != len(files):
            problems.append(f"{label} has {len(s.get('disks', []))} disks, the VM {len(files)}")
        for i, hp in enumerate(s.get("disks", [])[:len(files)]):
            if hp.lower() not in chains[i]:
                problems.append(f"{label}: its disk {hp} is not in the chain of disk {i} ({files[i]['path']}) "
                                f"on {home}")
                continue
            at = chains[i].index(hp.lower())
            if at >= depth[i] or at == 0:
                problems.append(f"{label}: its disk {hp} is out of order in the chain of disk {i} on {home}")
            depth[i] = at
    return [str(s.get("name")) for s in snaps]


def _check_saved_memory(home: str, rec: dict, vm_id: str, paths: HostPaths, story: dict,
                        problems: list[str]) -> None:
    """A saved VM's memory holds the counter its last save recorded."""
    vmrs_hp = rec["config_path"].rsplit("\\", 1)[0] + f"\\{vm_id}.vmrs"
    try:
        counter = disk.read_vmrs(paths.local(vmrs_hp))["counter"]
        if isinstance(story["expect_resume"], int) and counter != story["expect_resume"]:
            problems.append(f"the saved memory on {home} holds counter={counter}, "
                            f"the last save recorded {story['expect_resume']}")
    except (OSError, disk.DiskFormatError, OpError) as e:
        problems.append(f"{home} reports the VM Saved but its saved state {vmrs_hp} is unreadable: {e}")


ADAPTER_KEPT = ("legacy", "vlan_id", "static_mac")


def _check_adapters(home: str, rec: dict, events: list[dict], vm_id: str, problems: list[str]) -> list[dict]:
    """Each network adapter has the type, VLAN and static MAC address it was created with (the
    host's `create` event); its switch may differ (a --switch-map)."""
    now = adapters_of(rec.get("switches") or [], rec.get("nics") or [])
    made = next((e.get("nics") for e in events if e.get("vm_id") == vm_id and e.get("event") == "create"), None)
    if made is None:  # a VM of before the create event recorded its adapters
        return now
    for i, was in enumerate(made):
        have = now[i] if i < len(now) else None
        if have is None:
            problems.append(f"network adapter {i} is gone on {home}")
            continue
        lost = [f"{k} {was.get(k)!r} -> {have.get(k)!r}" for k in ADAPTER_KEPT if was.get(k) != have.get(k)]
        if lost:
            problems.append(f"network adapter {i} on {home} changed: {', '.join(lost)}")
    return now


def _check_once(lab_dir: Path, cfg, name: str) -> dict:
    by_id = _holders(lab_dir, cfg, name)
    result: dict = {"vm": name, "vm_id": None, "running_on": [], "state_by_host": {}, "integrity": "",
                    "writes_checked": 0, "host": None, "problems": []}
    problems: list[str] = result["problems"]
    if not by_id:
        result["integrity"] = f"VM {name!r} is not registered on any host ({', '.join(cfg.hosts) or 'no hosts'})"
        return result
    if len(by_id) > 1:
        problems.append(f"the name {name!r} is held by {len(by_id)} different VMs ({', '.join(sorted(by_id))})")
    vm_id = sorted(by_id, key=lambda i: -len(by_id[i]))[0]
    holders = by_id[vm_id]
    result["vm_id"] = vm_id
    _check_placement(result, holders, problems)

    events = history.load_events(lab_dir)
    result["overlaps"] = history.overlaps(events, vm_id)
    for o in result["overlaps"]:
        problems.append(f"ran on two hosts at once: started on {o['started_on']} at {o['t']:.3f} "
                        f"while running on {', '.join(o['still_running_on'])}")

    # journal first, then the disks
    acked, jproblems, story = check_journal(parse_journal(lab_dir / "guests" / f"{vm_id}.journal"))
    problems.extend(jproblems)
    result["writes_checked"] = len(acked)
    home = result["running_on"][0] if result["running_on"] else sorted(holders)[0]
    result["host"] = home
    rec = holders[home]
    paths = for_host(lab_dir, cfg.hosts[home])
    _check_story(home, rec, story, problems)
    per_disk = _disk_records(home, rec, vm_id, paths, problems)
    disk_seqs = [s for seqs in per_disk for s in seqs]
    result["disks"] = len(per_disk)
    result["disk_records"] = len(disk_seqs)
    _check_disks(home, disk_seqs, acked, problems)
    _check_each_disk(home, rec, per_disk, acked, problems)
    result["checkpoints"] = _check_checkpoints(home, rec, vm_id, paths, problems)
    result["adapters"] = _check_adapters(home, rec, events, vm_id, problems)
    if rec.get("state") == "Saved":
        _check_saved_memory(home, rec, vm_id, paths, story, problems)
    result["integrity"] = "ok" if not problems else "; ".join(problems)
    return result


def verify_vm(lab_dir: Path, name: str) -> dict:
    """See the module docstring. `name` may also be the VM id."""
    lab_dir = Path(lab_dir)
    cfg = load_config(lab_dir / "quickmig.toml")
    result: dict = {}
    for _attempt in range(3):
        result = _check_once(lab_dir, cfg, name)
        if result["integrity"] == "ok" or not result["running_on"]:
            break
        time.sleep(0.2)  # a checkpoint/merge may have moved the active disk under us
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.verify")
    ap.add_argument("--lab-dir", required=True, type=Path)
    ap.add_argument("name")
    ns = ap.parse_args(argv)
    res = verify_vm(ns.lab_dir, ns.name)
    print(json.dumps(res, indent=1, ensure_ascii=False))
    return 0 if res["integrity"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
