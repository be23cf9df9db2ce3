"""Which files a migration moves, and where each lands.

A host has several storage folders, each the root of an SMB share (config `storage`). Where
a source file lands on the destination is decided, first rule that applies (docs/design.md
section 5):

1. `--destination-path PATH` (options `destination_path`): everything under one folder, as
   Move-VM -DestinationStoragePath does. A file inside the VM's folder keeps its place
   relative to it under PATH; any other file goes to `PATH\\Virtual Hard Disks\\<name>`
   (an ISO image to `PATH\\<name>`).
2. `--storage-map SRC_PREFIX=DST_PREFIX` (options `storage_map`, repeatable): the longest
   prefix that holds the file.
3. The host pair's `[storage_maps.SRC.DST]` in the config, the same way.
4. Otherwise the same place relative to the destination's storage folder of the same name.

A file with no reachable destination (no rule places it inside one of the destination's
storage folders) is a `PlacementError` naming the option that would fix it.

Import-VM -Register keeps every file where it is and looks for the VM's checkpoints in
`Snapshots` beside its configuration's folder (docs/hyperv-rules.md, "Validation and
import"): a checkpoint's files must therefore be in `<VM folder>\\Snapshots` on the source
already (`layout_problems`), and land in `<VM folder there>\\Snapshots` (`PathMap.problems`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from workers.model import hostpaths
from workers.model.config import Config, Host, Storage
from workers.model.hostpaths import HostPathError
from workers.model.options import Options


def checkpoint_files(snap: dict) -> list[str]:
    """Every file of a checkpoint as VMInfo lists it: its .vmcx, .vmgs and (Standard) .vmrs."""
    return list(snap.get("files") or [snap["config_path"]])


# Hyper-V names the differencing disks of checkpoints .avhdx (.avhd): "Each checkpoint is
# stored as an .avhd file" (Plan for Hyper-V scalability). A parent whose child has another
# name was given one with New-VHD -Differencing: a golden image other VMs may share.
CHECKPOINT_DISK_SUFFIXES = (".avhdx", ".avhd")


# Files several VMs may use on one host, each copied once per destination and shared,
# with what to do when the destination has another file of that name.
SHARED_KINDS = {"iso": "rename one of the ISO images",
                "parent": "give one of the parent disks another name or place (--storage-map)"}


def shared_parents(vm: dict) -> set[str]:
    """The disks (lower case) of the VM's chains below a differencing disk that no checkpoint
    made: golden parents, which other VMs (here or on the destination) may use too."""
    out: set[str] = set()
    for d in vm["disks"]:
        chain = d.get("chain") or []
        for k in range(1, len(chain)):
            if not chain[k - 1].lower().endswith(CHECKPOINT_DISK_SUFFIXES):
                out.update(p.lower() for p in chain[k:])
                break
    return out


def disk_kind(vm: dict, path: str) -> str:
    """`parent` for a golden parent (copied once per destination and shared, as ISO images
    are), else `disk`."""
    return "parent" if path.lower() in shared_parents(vm) else "disk"


def stored_isos(host: Host, vm: dict) -> list[str]:
    """The VM's ISO images inside a storage folder of `host` (its source): the ones quickmig
    copies. A library image (a UNC path) stays where it is and one anywhere else is refused or
    ejected (`iso_problems`); neither is ever copied, nor deleted on either host."""
    out = []
    for iso in vm.get("isos", []):
        try:
            host.confine(iso)
        except HostPathError:
            continue
        out.append(iso)
    return out


@dataclass(frozen=True)
class IsoCheck:
    """What pre-flight found of a VM's ISO images that are not copied: `problems` (each one
    line: the path, the host, the fix), `ejects` (what --eject-unmovable-isos empties on the
    destination's copy: {path, drive}), `library` (UNC images left attached as they are)."""
    problems: list[str]
    ejects: list[dict]
    library: list[str]


def _drive_of(vm: dict, path: str) -> str:
    """The DVD drive holding `path` (VMInfo `dvd_drives`), as `SCSI 0:1`; '' if not told."""
    for d in vm.get("dvd_drives") or []:
        if hostpaths.same(str(d.get("path") or ""), path):
            return f"{d.get('controller_type')} {d.get('controller_number')}:{d.get('controller_location')}"
    return ""


def library_isos(src: Host, vm: dict) -> list[str]:
    """The VM's ISO images on UNC paths (library shares): the destination must reach them."""
    return [i for i in vm.get("isos", []) if i.startswith("\\\\") and i not in stored_isos(src, vm)]


def unc_reachable(dst_info: dict, asked: list[str]) -> dict[str, bool]:
    """host_info's `unc_reachable` answer for the UNC paths asked about; anything but true,
    or a path it does not answer for, counts as unreachable."""
    said = dst_info.get("unc_reachable") or {}
    low = {str(k).lower(): v for k, v in said.items()} if isinstance(said, dict) else {}
    return {p: low.get(p.lower()) is True for p in asked}


def iso_check(src: Host, vm: dict, *, source: str, destination: str, reachable: dict[str, bool],
              eject: bool) -> IsoCheck:
    """Each ISO image of the VM outside the source's storage folders: a UNC path the
    destination reaches (`reachable`, its host_info answer) stays attached as it is; one it
    cannot reach, or a local file outside every storage folder, is refused unless `eject`
    (--eject-unmovable-isos), which empties that drive on the destination's copy."""
    problems: list[str] = []
    ejects: list[dict] = []
    library: list[str] = []
    stored = {p.lower() for p in stored_isos(src, vm)}
    fix = "or pass --eject-unmovable-isos to empty that DVD drive on the destination's copy"
    for iso in vm.get("isos", []):
        if iso.lower() in stored:
            continue
        if iso.startswith("\\\\"):
            bad = hostpaths.unc_problem(iso)
            if bad:
                problems.append(f"ISO image {iso!r} of {vm['name']} on {source} is refused: {bad}; attach it by a "
                                f"plain UNC path (Set-VMDvdDrive -Path) or empty that DVD drive on {source} first")
                continue
            if reachable.get(iso):
                library.append(iso)
                continue
            if not eject:
                problems.append(f"ISO image {iso} of {vm['name']} is on {hostpaths.unc_share(iso)}, which "
                                f"{destination} cannot reach: give {destination} access to that share, {fix}")
                continue
        elif not eject:
            problems.append(f"ISO image {iso} of {vm['name']} is outside every storage folder of {source} "
                            f"({', '.join(src.roots)}): move it into one of them and attach it from there "
                            f"(Set-VMDvdDrive -Path), {fix}")
            continue
        ejects.append({"path": iso, "drive": _drive_of(vm, iso)})
    return IsoCheck(problems, ejects, library)


def frozen_files(vm: dict, src: Host | None = None) -> list[dict]:
    """What is read-only once our checkpoint exists: parent disks, every file of every
    checkpoint (the VM's configuration names them all, and -Register needs them all), ISOs
    (those in a storage folder of `src`, the source, when it is given: `stored_isos`)."""
    files, seen = [], set()

    def add(path: str, kind: str) -> None:
        if path.lower() not in seen:
            seen.add(path.lower())
            files.append({"path": path, "kind": kind})

    for disk in vm["disks"]:
        for parent in disk["chain"][1:]:
            add(parent, disk_kind(vm, parent))
    for snap in vm.get("snapshots", []):
        for path in checkpoint_files(snap):
            add(path, "checkpoint")
    for iso in (stored_isos(src, vm) if src is not None else vm.get("isos", [])):
        add(iso, "iso")
    return files


def _same_folder(a: str, b: str) -> bool:
    return a.rstrip("\\").lower() == b.rstrip("\\").lower()


def layout_problems(vm: dict) -> list[str]:
    """Why the VM's files would not land where Import-VM -Register looks on the destination
    (each with its fix); none for Hyper-V's default layout."""
    folder = vm["path"].rstrip("\\")
    where = vm.get("snapshot_location") or folder
    if not _same_folder(where, folder):
        return [f"its checkpoint file location {where} is not its configuration folder {folder} "
                f"(Import-VM -Register finds checkpoints only in Snapshots beside the configuration); move "
                f"them there with Move-VMStorage -SnapshotFilePath '{folder}', or Set-VM -SnapshotFileLocation "
                f"'{folder}' while it has no checkpoints"]
    inside = folder.lower() + "\\snapshots\\"
    stray = [p for s in vm.get("snapshots", []) for p in checkpoint_files(s) if not p.lower().startswith(inside)]
    if stray:
        return [f"checkpoint files outside {folder}\\Snapshots ({', '.join(stray)}): Import-VM -Register would "
                f"not find them on the destination"]
    return []


def downtime_files(vm: dict) -> list[dict]:
    """What only the saved VM can give: the active (leaf) disks and the VM's state files."""
    files = [{"path": d["chain"][0], "kind": "disk"} for d in vm["disks"]]
    files += [{"path": p, "kind": "state"} for p in vm.get("state_files", [])]
    return files


def chain_paths(vm: dict) -> list[str]:
    return [p for d in vm["disks"] for p in d["chain"]]


class PlacementError(HostPathError):
    """A source file that no placement rule puts in a storage folder of the destination."""


@dataclass(frozen=True)
class Place:
    """A file on a host: its host path, and where it is over SMB (share, path in the share)."""
    path: str
    share: str
    rel: str


def _under(path: str, prefix: str) -> str | None:
    """`path` relative to `prefix` ('' for the prefix itself), or None when it is not in it."""
    p, pre = path.rstrip("\\"), prefix.rstrip("\\")
    if p.lower() == pre.lower():
        return ""
    if p.lower().startswith(pre.lower() + "\\"):
        return p[len(pre) + 1:]
    return None


def _join(folder: str, rest: str) -> str:
    return folder.rstrip("\\") + ("\\" + rest if rest else "")


def place_of(host: Host, path: str) -> Place:
    storage, rel = host.place(path)
    return Place(path, storage.share, rel)


class PathMap:
    """Where each file of a VM on `source` lands on `destination` (the rules above)."""

    def __init__(self, cfg: Config, source: str, destination: str, opts: Options | None = None,
                 vm_folder: str | None = None):
        self.source, self.destination = source, destination
        self.src, self.dst = cfg.host(source), cfg.host(destination)
        opts = opts or Options()
        self.destination_path = opts.destination_path
        self.asked = [tuple(pair) for pair in opts.storage_map]
        self.defaults = list(cfg.storage_maps.get((source, destination), []))
        self.src_vm_folder = vm_folder  # for --destination-path: what keeps its place under it

    @classmethod
    def for_record(cls, cfg: Config, rec: dict, vm: dict | None = None) -> PathMap:
        """The placement of a migration's files (its options), for `vm` (its VMInfo on the source)."""
        return cls(cfg, rec["source"], rec["destination"], Options(**(rec.get("options") or {})),
                   vm_folder=(vm or {}).get("path") or rec.get("vm_folder"))

    def src_place(self, src_path: str) -> Place:
        return place_of(self.src, src_path)

    def dst_place(self, src_path: str) -> Place:
        return place_of(self.dst, self.dest(src_path))

    def _landing(self, src_path: str, folder: bool) -> tuple[str, str]:
        """(where `src_path` lands, the option that decided it)."""
        storage, rel = (self.src.place(src_path) if not folder else self._src_folder(src_path))
        if self.destination_path:
            base = self.src_vm_folder
            rest = _under(src_path, base) if base else None
            if rest is None:
                name = src_path.rstrip("\\").rsplit("\\", 1)[-1]
                rest = name if name.lower().endswith(".iso") or folder else f"Virtual Hard Disks\\{name}"
            return _join(self.destination_path, rest), "--destination-path"
        for pairs, what in ((self.asked, "--storage-map"), (self.defaults,
                                                             f"[storage_maps.{self.source}.{self.destination}]")):
            best = max(((s, d) for s, d in pairs if _under(src_path, s) is not None),
                       key=lambda sd: len(sd[0]), default=None)
            if best is not None:
                return _join(best[1], _under(src_path, best[0]) or ""), what
        match = next((s for s in self.dst.storage if s.name.lower() == storage.name.lower()), None)
        if match is None:
            raise PlacementError(
                f"{src_path} is in {storage.path} (storage {storage.name!r}) and {self.destination} has no "
                f"storage named {storage.name!r}: say where it goes with --storage-map "
                f"'{storage.path}=<a folder of {self.destination}>' or --destination-path, or give the pair a "
                f"[storage_maps.{self.source}.{self.destination}] entry")
        return _join(match.path, rel), "the storage of the same name"

    def _src_folder(self, folder: str) -> tuple[Storage, str]:
        for s in sorted(self.src.storage, key=lambda s: -len(s.path)):
            rest = _under(folder, s.path)
            if rest is not None:
                return s, rest
        raise HostPathError(f"{folder!r} is outside the configured root(s) {', '.join(map(repr, self.src.roots))}")

    def dest(self, src_path: str) -> str:
        """The destination host path of a source file; PlacementError when it would land
        outside the destination's storage folders, HostPathError for a bad source path."""
        landing, why = self._landing(src_path, folder=False)
        try:
            return self.dst.confine(landing)
        except HostPathError:
            raise PlacementError(f"{src_path} would land at {landing} ({why}), which is not a plain path in a "
                                 f"storage folder of {self.destination} ({', '.join(self.dst.roots)}); "
                                 f"fix {why}") from None

    def mapping(self, paths: list[str]) -> dict[str, str]:
        return {p: self.dest(p) for p in paths}

    def parent_fixes(self, vm: dict) -> list[dict]:
        """Each differencing disk on the destination must name its parent's new path."""
        fixes = []
        for disk in vm["disks"]:
            chain = disk["chain"]
            for child, parent in itertools.pairwise(chain):
                fixes.append({"path": self.dest(child), "parent_path": self.dest(parent)})
        return fixes

    def frozen_parent_fixes(self, vm: dict) -> list[dict]:
        """The fixes of the frozen disks only (not the leaf's): they are on the destination
        before Save-VM, so they are re-parented before the downtime."""
        return [f for d in vm["disks"] for f in self.parent_fixes({"disks": [{"chain": d["chain"][1:]}]})]

    def validation_disk_paths(self, vm: dict) -> dict[str, str]:
        """Each drive pointed at the copy of its newest frozen disk: before Save-VM the
        destination has every disk of the chain but the leaf the guest still writes."""
        return {d["path"]: self.dest(d["chain"][1] if len(d["chain"]) > 1 else d["path"])
                for d in vm["disks"] if d.get("chain")}

    def vm_folder(self, vm: dict) -> str:
        """The VM's folder on the destination: its configuration location there, and where
        its checkpoint files and Smart Paging file go from now on."""
        self.src_vm_folder = self.src_vm_folder or vm["path"]
        if self.destination_path:
            landing, why = self.destination_path.rstrip("\\"), "--destination-path"
        else:
            landing, why = self._landing(vm["path"], folder=True)
        if not any(hostpaths.same(landing, r) for r in self.dst.roots):
            try:
                self.dst.confine(landing)
            except HostPathError:
                raise PlacementError(f"the VM's folder {vm['path']} would land at {landing} ({why}), not a plain "
                                     f"path in a storage folder of {self.destination} "
                                     f"({', '.join(self.dst.roots)}); fix {why}") from None
        return landing

    def plan(self, vm: dict) -> list[dict]:
        """Every file the migration moves, as it is before our checkpoint: {path, kind, dest}
        (raises PlacementError for the first one with nowhere to go)."""
        self.src_vm_folder = self.src_vm_folder or vm["path"]
        files = [{"path": p, "kind": disk_kind(vm, p)} for d in vm["disks"] for p in d.get("chain", [])]
        files += [{"path": p, "kind": "checkpoint"} for s in vm.get("snapshots", []) for p in checkpoint_files(s)]
        files += [{"path": p, "kind": "state"} for p in vm.get("state_files", [])]
        files += [{"path": p, "kind": "iso"} for p in stored_isos(self.src, vm)]
        seen: dict[str, str] = {}
        out = []
        for f in files:
            if f["path"].lower() in seen:
                continue
            dest = self.dest(f["path"])
            clash = next((src for src, d in seen.items() if d.lower() == dest.lower()), None)
            if clash is not None:
                raise PlacementError(f"{f['path']} and {clash} would both land at {dest}: give one of them a "
                                     f"place of its own with --storage-map")
            seen[f["path"].lower()] = dest
            out.append({**f, "dest": dest})
        return out

    def problems(self, vm: dict) -> list[str]:
        """Why the planned layout is not one Import-VM -Register finds on the destination:
        the configuration in `<VM folder>\\Virtual Machines`, every checkpoint file in
        `<VM folder>\\Snapshots` there."""
        try:
            folder = self.vm_folder(vm)
            files = self.plan(vm)
        except HostPathError as e:
            return [str(e)]
        out = []
        want = {"state": folder + "\\Virtual Machines", "checkpoint": folder + "\\Snapshots"}
        for f in files:
            if f["kind"] in want and _under(f["dest"], want[f["kind"]]) is None:
                out.append(f"{f['path']} would land at {f['dest']}, outside {want[f['kind']]} where Import-VM "
                           f"-Register looks for it: map the VM's folder {vm['path']} as a whole")
        return out[:1]


def format_plan(files: list[dict], sizes: dict[str, int]) -> list[str]:
    """The plan as `quickmig migrate --dry-run` prints it: one line a file."""
    width = max((len(f["path"]) for f in files), default=0)
    lines = [f"{f['path']:<{width}}  {sizes.get(f['path'], 0):>14,d} B  {f['kind']:<10}  -> {f['dest']}"
             for f in files]
    lines.append(f"{len(files)} files, {sum(sizes.get(f['path'], 0) for f in files):,d} bytes")
    return lines
