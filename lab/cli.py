"""`quickmig lab ...` and `quickmig demo`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lab import demo, orchestrator
from lab.emulator import costs, messages
from lab.orchestrator import LabError
from lab.verify import verify_vm
from workers.model.config import load_config


def _cfg(args):
    return load_config(args.config)


def cmd_up(args) -> int:
    roots = {}
    for item in args.vm_root or []:
        host, sep, root = item.partition("=")
        if not sep or not host or not root:
            raise LabError(f"--vm-root takes HOST=PATH (hv2=E:\\Hyper-V), not {item!r}")
        roots[host] = root
    orchestrator.up(Path(args.dir), args.hosts, args.vms_per_host, metrics_port=args.metrics_port,
                    max_migrations=args.max_migrations, locale=args.locale, vm_roots=roots,
                    host_profile=args.host_profile, redis_mode=args.redis, node_count=args.nodes,
                    link_rate=args.link_rate)
    return 0


def cmd_partition(args) -> int:
    orchestrator.partition(Path(args.dir), args.node, cut=args.cut, heal=args.heal)
    return 0


def cmd_down(args) -> int:
    orchestrator.down(Path(args.dir))
    return 0


def _lifecycle_options(args) -> dict:
    """add-vm's automatic start action and Dynamic Memory options, as the emulator takes them."""
    more: dict = {}
    if args.automatic_start_action:
        more["automatic_start_action"] = args.automatic_start_action
    if not args.dynamic_memory:
        if args.memory_maximum_mb is not None or args.memory_assigned_mb is not None:
            raise LabError("--memory-maximum-mb and --memory-assigned-mb go with --dynamic-memory")
        return more
    more["dynamic_memory"] = True
    for key in ("memory_maximum_mb", "memory_assigned_mb"):
        if getattr(args, key) is not None:
            more[key] = getattr(args, key)
    return more


def _movability_options(args) -> dict:
    """add-vm's options for what does not move with a VM, or what the destination must offer it."""
    more: dict = {k: True for k in ("compat_migration", "vtpm", "clustered", "replica") if getattr(args, k)}
    if args.no_heartbeat:
        more["heartbeat"] = False
    if args.heartbeat_disabled:
        more["heartbeat_enabled"] = False
    devices: list = [kind for kind, on in (("assignable", args.assigned_device), ("gpu_partition", args.gpu_partition),
                                           ("sriov", args.sriov)) if on]
    devices += [{"kind": "fibre_channel", "san": san} for san in args.fibre_channel or []]
    if devices:
        more["devices"] = devices
    return more


def cmd_add_vm(args) -> int:
    more = {"switches": args.switch} if args.switch else {}
    more.update({k: v for k, v in (("vm_id", args.id), ("parent", args.parent), ("path", args.path),
                                   ("disks", args.disks), ("disk_folders", args.disk_folder),
                                   ("generation", args.generation), ("checkpoints", args.checkpoints),
                                   ("golden", args.golden), ("state", args.state),
                                   ("vlan_id", args.vlan), ("static_mac", args.static_mac), ("iso", args.iso))
                 if v is not None})
    if args.legacy_adapter:
        more["legacy_adapter"] = True
    more.update(_lifecycle_options(args))
    more.update(_movability_options(args))
    # the orchestrator turns a host's refusal into a LabError (one line, exit 2)
    vm = orchestrator.add_vm(_cfg(args), args.name, args.host, memory_mb=args.memory_mb,
                             disk_mb=args.disk_mb, write_rate_kbps=args.write_rate_kbps,
                             checkpoint_type=args.checkpoint_type, version=args.config_version,
                             passthrough_disk=args.passthrough_disk, **more)
    print(json.dumps(vm, ensure_ascii=False) if args.json else f"{args.name} running on {args.host}")
    return 0


def cmd_set_host(args) -> int:
    cfg = _cfg(args)
    if cfg.lab_dir is None:
        raise LabError(f"{cfg.path} is not a lab config")
    props: dict = {}
    if args.cpu_model is not None:
        props["cpu_model"] = args.cpu_model
    if args.cpu_features is not None:
        props["cpu_features"] = [f for f in args.cpu_features.split(",") if f]
    if args.memory_mb is not None:
        props["memory_bytes"] = args.memory_mb * 1024 * 1024
    if args.numa_nodes is not None:
        props["numa_nodes"] = args.numa_nodes
    if args.numa_spanning is not None:
        props["numa_spanning"] = args.numa_spanning == "on"
    if args.san:
        props["sans"] = args.san
    if args.unc_share is not None or args.no_unc_shares:
        props["unc_shares"] = list(args.unc_share or [])
    res = orchestrator.set_host(cfg, args.host, props, reset=args.reset, guardians_from=args.import_guardians_from)
    print(json.dumps(res, ensure_ascii=False) if args.json else f"{args.host}: " + ", ".join(
        f"{k}={res[k]}" for k in ("cpu_model", "memory_bytes", "numa_nodes", "numa_spanning", "sans")))
    return 0


def cmd_restart_host(args) -> int:
    cfg = _cfg(args)
    if cfg.lab_dir is None:
        raise LabError(f"{cfg.path} is not a lab config")
    cfg.host(args.host)
    res = orchestrator.restart_host(cfg.lab_dir, args.host, down_s=args.down_s,
                                    say=(lambda *_: None) if args.json else print)
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_verify(args) -> int:
    cfg = _cfg(args)
    if cfg.lab_dir is None:
        print(f"quickmig: {cfg.path} is not a lab config", file=sys.stderr)
        return 2
    res = verify_vm(cfg.lab_dir, args.vm)
    if args.json:
        print(json.dumps(res, ensure_ascii=False, sort_keys=True))
    else:
        print(f"{res['vm']}: running on {', '.join(res['running_on']) or 'no host'}; "
              f"integrity {res['integrity']} ({res['writes_checked']} writes checked)")
    return 0 if res["integrity"] == "ok" and len(res["running_on"]) == 1 else 1


def cmd_demo(args) -> int:
    return demo.run(keep=args.keep)


def register(sub, common) -> None:
    lab = sub.add_parser("lab", parents=[common], help="the embedded lab environment")
    lsub = lab.add_subparsers(dest="lab_command", required=True)

    u = lsub.add_parser("up", parents=[common], help="start Redis, Samba, emulated hosts and worker pools")
    u.add_argument("--dir", required=True)
    u.add_argument("--hosts", type=int, default=2)
    u.add_argument("--vms-per-host", type=int, default=1)
    u.add_argument("--metrics-port", type=int, default=None, help="the lab's /metrics port (default: a free one)")
    u.add_argument("--max-migrations", type=int, default=2,
                   help="each host's max_migrations: migrations at once from or to it")
    u.add_argument("--locale", default=messages.DEFAULT_LOCALE, choices=messages.LOCALES,
                   help="the hosts' display language: every message they write is in it (e.g. de-DE)")
    u.add_argument("--vm-root", action="append", metavar="HOST=PATH",
                   help="a host's VM folder instead of D:\\VMs\\<host>, e.g. hv2=E:\\Hyper-V (repeatable)")
    u.add_argument("--host-profile", default=costs.FAST.name, choices=sorted(costs.PROFILES),
                   help="what each host operation costs: fast (the lab's own speed) or windows (a new "
                        "powershell.exe, the Hyper-V module and each cmdlet as on a Windows Server host)")
    u.add_argument("--redis", default="single", choices=orchestrator.REDIS_MODES,
                   help="single: one redis-server; sentinel: a master and a replica under three sentinels "
                        "(redis-master, redis-replica, sentinel-1..3 in lab.json), so a failover can be forced")
    u.add_argument("--nodes", type=int, default=0, metavar="N",
                   help="run a copy of every worker pool in each of N network namespaces (needs root and "
                        "iproute2), reaching Redis and the hosts over links the lab creates")
    u.add_argument("--link-rate", default=None, metavar="RATE",
                   help="with --nodes: cap each node's link, both ways (tc tbf), e.g. 1gbit or 10gbit")
    u.set_defaults(func=_guard(cmd_up, LabError))

    pt = lsub.add_parser("partition", parents=[common],
                         help="cut a node of `lab up --nodes` off from the lab's Redis (or hosts), or --heal it")
    pt.add_argument("--dir", required=True)
    pt.add_argument("--node", required=True, help="n1, n2, ... (lab.json: net.nodes)")
    pt.add_argument("--from", dest="cut", default="redis", choices=("redis", "hosts"))
    pt.add_argument("--heal", action="store_true", help="take the cut away")
    pt.set_defaults(func=_guard(cmd_partition, LabError))

    d = lsub.add_parser("down", parents=[common], help="stop everything the lab started")
    d.add_argument("--dir", required=True)
    d.set_defaults(func=_guard(cmd_down, LabError))

    a = lsub.add_parser("add-vm", parents=[common], help="create a running VM on a lab host")
    a.add_argument("name")
    a.add_argument("--host", required=True)
    a.add_argument("--memory-mb", type=int, default=64)
    a.add_argument("--disk-mb", type=int, default=128)
    a.add_argument("--write-rate-kbps", type=int, default=64, help="guest writes, KiB per second")
    a.add_argument("--checkpoint-type", default="Standard",
                   choices=("Standard", "Production", "ProductionOnly", "Disabled"))
    a.add_argument("--config-version", default="10.0", help="the VM's configuration version")
    a.add_argument("--switch", action="append", help="virtual switch of a network adapter (repeatable)")
    a.add_argument("--legacy-adapter", action="store_true",
                   help="the first network adapter is a legacy (emulated) one: Generation 1 only")
    a.add_argument("--vlan", type=int, metavar="ID", help="the first network adapter's access VLAN (1-4094)")
    a.add_argument("--static-mac", metavar="MAC", help="the first network adapter's static MAC address")
    a.add_argument("--passthrough-disk", action="store_true", help="also attach a pass-through (physical) disk")
    a.add_argument("--iso", metavar="PATH",
                   help="the ISO image on its DVD drive (made there if missing): a UNC path on the lab's library "
                        "share (\\\\lib01\\ISO\\x.iso; the host must reach it, set-host --unc-share), or a local "
                        "path outside the storage (C:\\Users\\x\\a.iso); default the host's own lab-tools.iso")
    a.add_argument("--id", metavar="GUID", help="the VM's id: e.g. that of a VM on another host, as a "
                   "Hyper-V Replica replica keeps its primary's id")
    a.add_argument("--parent", metavar="PATH", help="host path of a base disk the VM's disk is a differencing "
                   "disk of (made first if it is not there): VMs given the same PATH share a golden parent")
    a.add_argument("--path", metavar="FOLDER", help="host folder of the VM's files (default <vm_root>\\<id>)")
    a.add_argument("--disks", type=int, metavar="N", help="how many virtual disks (default 1), on SCSI 0:0 and on")
    a.add_argument("--generation", type=int, choices=(1, 2),
                   help="1: BIOS, disks on IDE 0:0, 0:1, 1:0, 1:1 first, then SCSI (default 2: SCSI only)")
    a.add_argument("--checkpoints", type=int, metavar="N",
                   help="take N user checkpoints in a chain while the guest writes, Standard and Production in turn")
    a.add_argument("--state", choices=("Running", "Off", "Saved"),
                   help="Off (turned off) or Saved (Save-VM) after it ran and wrote a while (default Running)")
    a.add_argument("--golden", metavar="NAME", help="the boot disk is a child of the host's shared golden image "
                   "NAME (<vm_root>\\Golden\\NAME.vhdx, made on first use)")
    a.add_argument("--disk-folder", action="append", metavar="PATH",
                   help="host folder for its disks, in any storage folder of the host (repeatable: disks "
                        "placed round robin; default the VM's Virtual Hard Disks)")
    a.add_argument("--automatic-start-action", choices=("Nothing", "StartIfRunning", "Start"), default=None,
                   help="what the VM does when its host starts (default StartIfRunning, as Hyper-V's)")
    a.add_argument("--dynamic-memory", action="store_true",
                   help="Dynamic Memory: --memory-mb is the startup memory")
    a.add_argument("--memory-maximum-mb", type=int, default=None,
                   help="with --dynamic-memory: its maximum (default 1048576, as Hyper-V's)")
    a.add_argument("--memory-assigned-mb", type=int, default=None,
                   help="with --dynamic-memory: what the running guest is assigned, more or less than "
                        "its startup memory (its saved state is this big; default --memory-mb)")
    a.add_argument("--no-heartbeat", action="store_true",
                   help="the guest does not run the Heartbeat integration service: no heartbeat ever comes")
    a.add_argument("--heartbeat-disabled", action="store_true",
                   help="the VM's Heartbeat integration service is disabled (Disable-VMIntegrationService)")
    a.add_argument("--compat-migration", action="store_true",
                   help="processor compatibility mode (Set-VMProcessor -CompatibilityForMigrationEnabled $true)")
    a.add_argument("--vtpm", action="store_true",
                   help="a virtual TPM whose key protector this host's guardian owns (Enable-VMTPM)")
    a.add_argument("--clustered", action="store_true", help="a clustered role of a failover cluster (IsClustered)")
    a.add_argument("--replica", action="store_true", help="replicating with Hyper-V Replica, as its primary")
    a.add_argument("--assigned-device", action="store_true",
                   help="a PCIe device assigned with Discrete Device Assignment (Add-VMAssignableDevice)")
    a.add_argument("--gpu-partition", action="store_true", help="a GPU partition (Add-VMGpuPartitionAdapter)")
    a.add_argument("--sriov", action="store_true",
                   help="its network adapter uses an SR-IOV virtual function (IovWeight 100)")
    a.add_argument("--fibre-channel", action="append", metavar="SAN",
                   help="a virtual Fibre Channel adapter on this virtual SAN (made on the host if missing; repeatable)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_guard(cmd_add_vm, LabError))

    h = lsub.add_parser("set-host", parents=[common],
                        help="change what a lab host offers a VM: processor, memory, NUMA, guardians, virtual SANs")
    h.add_argument("host")
    h.add_argument("--cpu-model", help="the processor's name (Win32_Processor Name)")
    h.add_argument("--cpu-features", metavar="A,B,...",
                   help="the processor features it offers a VM (another generation: another set)")
    h.add_argument("--memory-mb", type=int, help="memory the host has for VMs")
    h.add_argument("--numa-nodes", type=int, help="NUMA nodes the memory is split into")
    h.add_argument("--numa-spanning", choices=("on", "off"), help="whether a VM may use more than one NUMA node")
    h.add_argument("--import-guardians-from", metavar="HOST",
                   help="import another lab host's guardians with their private keys (as its certificates "
                        "exported from its 'Shielded VM Local Certificates' store)")
    h.add_argument("--san", action="append", metavar="NAME", help="its virtual SANs (repeatable; replaces the list)")
    h.add_argument("--unc-share", action="append", metavar="\\\\SERVER\\SHARE",
                   help="an SMB share it reaches (repeatable; replaces the list; default the lab's library "
                        "\\\\lib01\\ISO): the ISO images a DVD drive may name there")
    h.add_argument("--no-unc-shares", action="store_true", help="it reaches no SMB share (no library image)")
    h.add_argument("--reset", action="store_true", help="first back to what a lab host offers by default")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=_guard(cmd_set_host, LabError))

    r = lsub.add_parser("restart-host", parents=[common],
                        help="restart a lab host as a reboot would: running VMs saved, then each VM "
                             "does what its automatic start action says")
    r.add_argument("host")
    r.add_argument("--down-s", type=float, default=0.0, help="seconds the host stays down (default 0)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_guard(cmd_restart_host, LabError))

    v = lsub.add_parser("verify", parents=[common], help="where a VM runs, and whether any write was lost")
    v.add_argument("vm")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", parents=[common], help="lab up, migrate a running VM, summary, lab down")
    demo.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    demo.set_defaults(func=cmd_demo)


def _guard(fn, *errors):
    def run(args):
        try:
            return fn(args)
        except errors as e:
            print(f"quickmig: {e}", file=sys.stderr)
            return 2
    return run
