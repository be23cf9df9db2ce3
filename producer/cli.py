"""The `quickmig` command.

Exit status: 0 success; 1 a migration that ended other than completed; 2 a request
refused or a configuration problem (one line on stderr saying what to fix).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib.metadata import entry_points

import redis

from producer import calibration, intake, plan_file, plans, report, terminal, watch, webhooks
from producer.migrations import MigrationRequest, Producer, RequestError
from producer.remote import Remote
from workers.coord.throttle import Throttle, ThrottleError, parse_rate
from workers.model import file_plan, host_profile, keys
from workers.model.config import ConfigError, find_config_path, load_config
from workers.model.record import CLIENT_OPTIONS, RecordNotFound
from workers.obs import metrics

# Other packages add subcommands through this entry point group: each entry is a
# function register(subparsers, common_parser). The lab registers `quickmig lab` and
# `quickmig demo` this way, so the dependency runs one way: the lab uses the CLI's
# parser, the CLI never imports the lab.
COMMANDS_GROUP = "quickmig.commands"

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_REFUSED = 0, 1, 2


def _print_json(obj) -> None:
    print(terminal.json_text(obj))


def _say(*parts, file=None) -> None:
    """print() for text that may come from a host or a record: nothing a terminal acts on."""
    print(*(terminal.text(p) for p in parts), file=file)


def _producer(args) -> Producer | Remote:
    """The API's client when the config has `[api] url` (no Redis, no host credentials here),
    else the Producer, which talks to Redis and the hosts itself."""
    cfg = load_config(args.config)
    return Remote.of(cfg) or Producer(cfg)


def cmd_migrate(args) -> int:
    p = _producer(args)
    raw = {k: getattr(args, k) for k in ("max_downtime", "on_exceed", "max_rounds", "not_before", "window",
                                         "keep_source_hours", "destination_path", "storage_map", "switch_map")
           if getattr(args, k) is not None}
    if args.start:
        raw["start"] = True
    if args.eject_unmovable_isos:
        raw["eject_unmovable_isos"] = True
    req = MigrationRequest(args.vm, args.source, args.destination, raw)
    if args.dry_run:
        plan = p.dry_run(req)
        if args.json:
            _print_json(plan)
        else:
            print(f"{plan['vm']} from {plan['source']} to {plan['destination']}: nothing copied (--dry-run)")
            for line in file_plan.format_plan(plan["files"], {f["path"]: f["bytes"] for f in plan["files"]}):
                print(line)
            for src, dst in plan["switches"].items():
                print(f"switch {src} -> {dst}")
            for iso in plan.get("library_isos") or []:
                print(f"ISO {iso} stays attached as it is ({plan['destination']} reaches it)")
            for e in plan.get("ejected_isos") or []:
                print(f"ISO {e['path']} ejected on {plan['destination']}'s copy (--eject-unmovable-isos)")
            print(f"pre-flight: {'ok' if plan['preflight']['ok'] else '; '.join(plan['preflight']['problems'])}")
            copy = f"{plan['copy_bytes'] / 2**20:.0f} MiB in {plan['predicted_copy_seconds']:.1f} s"
            cold = f" (a cold move: the VM is {plan['cold']})" if plan.get("cold") else ""
            print(f"predicted: copy {copy}, downtime {plan['predicted_downtime_seconds']:.1f} s{cold}")
            if plan["rates"].get("sources"):  # an API server of an older version sends none
                _say(f"predicted from: {report.sources(plan['rates']['sources'])}")
        return EXIT_OK
    # over the API the server decides; here, with the hosts' credentials, refuse before queueing
    rec = p.enqueue(req, preflight=True) if isinstance(p, Producer) else p.enqueue(req)
    if not args.wait:
        if args.json:
            _print_json(rec)
        else:
            _say(rec["id"])
        return EXIT_OK
    on_change = None if args.json else (lambda r: _say(f"{r['id']}: {r['state']}", file=sys.stderr))
    rec = p.wait(rec["id"], timeout_s=args.timeout, on_change=on_change)
    if args.json:
        _print_json(rec)
    else:
        print(report.summary(rec))
    return EXIT_OK if rec["state"] == "completed" else EXIT_NOT_COMPLETED


def cmd_status(args) -> int:
    p = _producer(args)
    rec = p.note_waiting([p.get(args.id)])[0]
    if args.json:
        _print_json(rec)
    else:
        print(report.summary(rec))
    return EXIT_OK


def cmd_cancel(args) -> int:
    p = _producer(args)
    rec = p.cancel(args.id)
    if args.wait:
        rec = p.wait(args.id, timeout_s=args.timeout)
    if args.json:
        _print_json(rec)
    else:
        _say(f"{rec['id']}: {rec['state']}")
    return EXIT_OK if not args.wait or rec["state"] == "rolled_back" else EXIT_NOT_COMPLETED


def cmd_list(args) -> int:
    recs = _producer(args).list(args.limit)
    if args.json:
        _print_json(recs)
    else:
        for rec in recs:
            print(report.one_line(rec))
    return EXIT_OK


def cmd_throttle(args) -> int:
    """Show or change the copy bandwidth limits (applied to running copies within a chunk)."""
    cfg = load_config(args.config)
    try:  # check everything before changing anything
        global_rate = parse_rate(args.global_limit) if args.global_limit is not None else None
        pair_rate = parse_rate(args.pair[2]) if args.pair else None
    except ThrottleError as e:
        raise ConfigError(str(e)) from None
    remote = Remote.of(cfg)
    if remote is not None:
        limits = remote.throttle(global_rate, (args.pair[0], args.pair[1], pair_rate)
                                 if args.pair and pair_rate is not None else None)
        return _print_limits(limits, args.json)
    t = Throttle(cfg.redis_client(**CLIENT_OPTIONS))
    if args.pair:
        cfg.host(args.pair[0]), cfg.host(args.pair[1])  # unknown hosts are refused with the inventory's names
    if global_rate is not None:
        t.set(global_rate)
    if pair_rate is not None:
        t.set(pair_rate, pair=(args.pair[0], args.pair[1]))
    return _print_limits(t.limits(), args.json)


def _print_limits(limits: dict, as_json: bool) -> int:
    if as_json:
        _print_json(limits)
    else:
        g = limits["global"]
        _say(f"global  {'unlimited' if not g else f'{g} B/s'}")
        for pair, rate in sorted(limits["pairs"].items()):
            _say(f"{pair}  {rate} B/s")
    return EXIT_OK


def _plan_on(args) -> tuple:
    """(the Producer or the API's client, the checked plan file): over the API when the config
    has `[api] url` (the server checks the hosts; here only the file's grammar and values)."""
    cfg = load_config(args.config)
    remote = Remote.of(cfg)
    if remote is not None:
        return remote, plan_file.load_data(args.file, hosts=cfg.hosts or None)
    return Producer(cfg), plan_file.load(args.file, hosts=cfg.hosts)


def _plan_status(args, pid: str) -> dict:
    cfg = load_config(args.config)
    remote = Remote.of(cfg)
    return remote.plan_status(pid) if remote is not None else plans.status(Producer(cfg), pid)


def cmd_plan_dry_run(args) -> int:
    """Every member's pre-flight and the plan's predicted schedule, changing nothing."""
    p, plan = _plan_on(args)
    out = p.plan_dry_run(plan) if isinstance(p, Remote) else plans.dry_run(p, plan)
    if args.json:
        _print_json(out)
    else:
        for line in plans.schedule_lines(out):
            _say(line)
    return EXIT_OK


def cmd_plan_apply(args) -> int:
    """Check every member, store the plan and release its first members; --wait follows it."""
    p, plan = _plan_on(args)
    st = p.plan_apply(plan) if isinstance(p, Remote) else plans.apply(p, plan)
    if args.wait:
        on_change = None if args.json else (
            lambda s: _say(f"{s['id']}: {s['state']}; " + ", ".join(f"{n} {k}" for k, n in sorted(s["counts"].items())),
                           file=sys.stderr))
        if isinstance(p, Remote):
            st = p.plan_wait(st["id"], timeout_s=args.timeout, on_change=on_change)
        else:
            st = plans.wait(p, st["id"], timeout_s=args.timeout, on_change=on_change)
    if args.json:
        _print_json(st)
    elif args.wait:
        for line in plans.status_lines(st):
            _say(line)
    else:
        _say(st["id"])
    return EXIT_OK if not args.wait or st["state"] == "completed" else EXIT_NOT_COMPLETED


def cmd_plan_status(args) -> int:
    st = _plan_status(args, args.id)
    if args.json:
        _print_json(st)
    else:
        for line in plans.status_lines(st):
            _say(line)
    return EXIT_OK


def cmd_plan_cancel(args) -> int:
    cfg = load_config(args.config)
    remote = Remote.of(cfg)
    st = remote.plan_cancel(args.id) if remote is not None else plans.cancel(Producer(cfg), args.id)
    if args.json:
        _print_json(st)
    else:
        _say(f"{st['id']}: {st['state']}" + ("" if st["state"] == "cancelled" else
                                            " (cancelled: its running members are rolling back)"))
    return EXIT_OK


def cmd_config_check(args) -> int:
    """Load and check everything a worker would, connecting nowhere: `ok`, or the one line."""
    cfg = load_config(args.config)
    cfg.check_credentials()
    for warning in cfg.warnings():
        _say(f"quickmig: warning: {warning}", file=sys.stderr)
    print("ok")
    return EXIT_OK


def cmd_calibrate(args) -> int:
    """Measure a host's costs without touching a VM and store them for the downtime prediction."""
    cfg = load_config(args.config)
    if not cfg.hosts:
        raise ConfigError("quickmig calibrate talks to the host itself: it needs a config with the host and "
                          "redis_url (not only [api] url)")
    cfg.host(args.host)  # an unknown host is refused with the inventory's names
    if args.scratch_mib < calibration.SCRATCH_MIB_MIN or args.samples < 1:
        raise ConfigError(f"--scratch-mib must be at least {calibration.SCRATCH_MIB_MIN} and --samples at least 1")
    r = cfg.redis_client(**CLIENT_OPTIONS)
    r.ping()  # where the figures go: unreachable, say so before measuring for a minute
    try:
        doc = calibration.calibrate(cfg, r, args.host, args.scratch_mib, args.samples)
    except calibration.CalibrationError as e:
        raise RequestError(str(e)) from None
    if args.json:
        _print_json(doc)
        return EXIT_OK
    _say(f"{doc['host']} calibrated at {host_profile.when(doc)}:")
    for name in ("shell_create_s", "process_start_s", "module_load_s", "cmdlet_s"):
        _say(f"  {name:<16} {doc[name]:.3f} s")
    for name in ("hash_bps", "smb_write_bps", "smb_read_bps"):
        _say(f"  {name:<16} {doc[name] / 1e6:.0f} MB/s")
    return EXIT_OK


def cmd_metrics_exporter(args) -> int:
    fleet_redis = None
    port, addr = args.port, args.addr
    # the address comes from [metrics] addr whenever a config is there: the deploy units name
    # no address, so an exporter listens beyond loopback only where quickmig.toml says so
    if args.fleet or port is None or (addr is None and find_config_path(args.config).exists()):
        cfg = load_config(args.config)
        port = port if port is not None else cfg.metrics.port
        addr = addr or cfg.metrics.addr
        if args.fleet:
            fleet_redis = cfg.redis_client(decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
    addr = addr or "127.0.0.1"
    if port is None:
        raise ConfigError("no metrics port: pass --port or set [metrics] port in quickmig.toml")
    try:
        metrics.serve(port, addr, fleet_redis=fleet_redis)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return EXIT_OK


def cmd_watch(args) -> int:
    p = Producer.from_config(args.config)
    if args.interval <= 0:
        raise ConfigError("--interval must be a positive number of seconds")
    if args.plan is not None:
        if args.id is not None:
            raise ConfigError("watch takes a migration id or --plan PLAN, not both")
        plans.load(p, args.plan)  # an unknown plan is refused before the first draw
        st = watch.watch_plan(lambda: plans.status(p, args.plan), plans.status_lines, interval_s=args.interval)
        return EXIT_OK if st["state"] == "completed" else EXIT_NOT_COMPLETED
    if args.id is None:
        return watch.watch_all(p.store, interval_s=args.interval, once=args.once, note=p.note_waiting)
    rec = watch.watch_one(p.store, args.id, interval_s=args.interval, note=p.note_waiting)
    print(report.summary(rec))
    return EXIT_OK if rec["state"] == "completed" else EXIT_NOT_COMPLETED


def cmd_intake(args) -> int:
    """Consume the Redis intake stream until stopped (producer/intake.py)."""
    if args.claim_idle_s <= 0:
        raise ConfigError("--claim-idle-s must be a positive number of seconds")
    intake.Intake(Producer.from_config(args.config), claim_idle_s=args.claim_idle_s).serve()
    return EXIT_OK


def cmd_webhooks_run(args) -> int:
    """Deliver the configured webhooks until stopped (producer/webhooks.py)."""
    if args.retry_for_h * 3600 < webhooks.RETRY_FOR_S_MIN:
        raise ConfigError("--retry-for-h must be at least 24 (hours)")
    if args.max_backoff_s <= 0:
        raise ConfigError("--max-backoff-s must be a positive number of seconds")
    webhooks.run(load_config(args.config), retry_for_s=args.retry_for_h * 3600,
                 max_backoff_s=args.max_backoff_s)
    return EXIT_OK


def cmd_orphans(args) -> int:
    """What the orphan sweep (workers.steps.orphans) found on the hosts and did, newest first."""
    cfg = load_config(args.config)
    r = cfg.redis_client(decode_responses=True, socket_timeout=30)
    out = [json.loads(x) for x in r.lrange(keys.ORPHANS, 0, args.last - 1)]
    if args.json:
        _print_json(out)
        return EXIT_OK
    if not out:
        print("the orphan sweep has found nothing (it looks every [reconciler] orphan_sweep_every_s)")
    for f in out:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f["at"]))
        _say(f"{when} {f['host']}: {f['kind']} of migration {f['mid']} (VM {f['vm'] or f['vm_id']}): "
             f"{f['action']}" + (f"; {f['note']}" if f["note"] else ""))
    return EXIT_OK


def cmd_webhooks_status(args) -> int:
    cfg = load_config(args.config)
    subs = [s for s in webhooks.subscriptions(cfg) if args.name is None or s.name == args.name]
    if args.name is not None and not subs:
        known = ", ".join(sorted(cfg.webhooks)) or "none"
        raise ConfigError(f"no webhook {args.name!r} in the config (it has: {known})")
    r = cfg.redis_client(decode_responses=True, socket_timeout=30)
    out = [webhooks.status(r, s, last=args.last) for s in subs]
    if args.json:
        _print_json(out)
        return EXIT_OK
    if not out:
        print("no webhooks configured ([webhooks.NAME] in the config)")
    for st in out:
        print(f"{st['name']} -> {st['url']} ({', '.join(st['events']) if st['events'] else 'every state'}): "
              f"{st['delivered']} delivered, {st['pending']} pending for {st['migrations_waiting']} migration(s), "
              f"{st['failed_attempts']} failed attempts, {st['dropped']} dropped"
              + ("" if st["delivering"] else "; no process is delivering it"))
        if st["last_error"]:
            print(f"  last error: {st['last_error']}")
        if st["gaps"]:
            g = st["last_gap"]
            print(f"  EVENTS LOST: {st['gaps']} time(s) the events stream was trimmed before this subscription "
                  f"read it; last: events after {g['after']} and before {g['before']}")
        for e in st["log"]:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["at"]))
            print(f"  {when} {e['result']:9} {e['migration']} #{e['seq']} {e['new']} "
                  f"(attempt {e['attempt']}: {e['outcome']})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="quickmig.toml (default: $QUICKMIG_CONFIG, else ./quickmig.toml)")
    parser = argparse.ArgumentParser(prog="quickmig", parents=[common],
                                     description="Quick Migration of running Hyper-V VMs between hosts")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", parents=[common], help="migrate a running VM to another host")
    m.add_argument("vm", help="VM name, exactly as Hyper-V shows it")
    m.add_argument("--from", dest="source", required=True, metavar="SRC")
    m.add_argument("--to", dest="destination", required=True, metavar="DST")
    m.add_argument("--wait", action="store_true", help="follow the migration to its end")
    m.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N s")
    m.add_argument("--json", action="store_true")
    m.add_argument("--max-downtime", metavar="SECONDS",
                   help="cut over once the predicted downtime is at most this (90s, 2m, ...)")
    m.add_argument("--on-exceed", metavar="abort|proceed",
                   help="with --max-downtime: what to do if pre-copy rounds cannot get there (default abort)")
    m.add_argument("--max-rounds", metavar="N", help="pre-copy rounds after the base copy (default 3; 0: none)")
    m.add_argument("--not-before", metavar="TIME", help="cutover window opens (ISO 8601; no zone means UTC)")
    m.add_argument("--window", metavar="DURATION", help="cutover window length (from --not-before, else now)")
    m.add_argument("--keep-source", dest="keep_source_hours", metavar="HOURS",
                   help="keep the source VM registered and off this long before removing it")
    m.add_argument("--destination-path", metavar="PATH",
                   help="put every file of the VM under this folder of the destination (like Move-VM "
                        "-DestinationStoragePath)")
    m.add_argument("--storage-map", action="append", metavar="SRC_PREFIX=DST_PREFIX",
                   help="files under SRC_PREFIX land under DST_PREFIX (repeatable; the longest prefix wins)")
    m.add_argument("--switch-map", action="append", metavar="SRC=DST",
                   help="connect the VM's adapters on virtual switch SRC to switch DST of the destination (repeatable)")
    m.add_argument("--eject-unmovable-isos", action="store_true",
                   help="a DVD drive whose ISO image cannot go with the VM (a local file outside every storage "
                        "folder, a library share the destination cannot reach) is emptied on the destination's "
                        "copy instead of refusing the migration; the source keeps it")
    m.add_argument("--start", action="store_true",
                   help="a VM that is Off or Saved (a cold move): start it on the destination (a Saved one "
                        "resumes from its saved state); without it, it arrives as it is")
    m.add_argument("--dry-run", action="store_true",
                   help="print the file plan (each file, its size, where it lands), the pre-flight's "
                        "problems and the predicted copy time and downtime; change nothing")
    m.set_defaults(func=cmd_migrate)

    s = sub.add_parser("status", parents=[common], help="show one migration")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    c = sub.add_parser("cancel", parents=[common],
                       help="cancel a migration before its downtime (it rolls back; refused once the VM is down)")
    c.add_argument("id")
    c.add_argument("--wait", action="store_true", help="follow the rollback to its end")
    c.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N s")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cancel)

    ls = sub.add_parser("list", parents=[common], help="list migrations, newest first")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    th = sub.add_parser("throttle", parents=[common],
                        help="show or set copy bandwidth limits "
                             "(bytes/s; K, M, G suffixes are powers of 1000; 0 = none)")
    th.add_argument("--global", dest="global_limit", metavar="RATE", help="limit for all copies together")
    th.add_argument("--pair", nargs=3, metavar=("SRC", "DST", "RATE"), help="limit for copies from SRC to DST")
    th.add_argument("--json", action="store_true")
    th.set_defaults(func=cmd_throttle)

    pl = sub.add_parser("plan", parents=[common], help="plans: many migrations in ordered groups (a YAML or JSON "
                                                       "file, docs/plan.schema.json)")
    pl_sub = pl.add_subparsers(dest="plan_command", required=True)
    pd = pl_sub.add_parser("dry-run", parents=[common],
                           help="run every member's pre-flight and print the predicted schedule: each VM's "
                                "start, copy time, downtime and finish, and the plan's finish; change nothing")
    pd.add_argument("file", metavar="FILE")
    pd.add_argument("--json", action="store_true")
    pd.set_defaults(func=cmd_plan_dry_run)
    pa = pl_sub.add_parser("apply", parents=[common],
                           help="check every member (each pre-flight must pass, else nothing changes), store "
                                "the plan and start it; prints its id")
    pa.add_argument("file", metavar="FILE")
    pa.add_argument("--wait", action="store_true", help="follow the plan to its end (exit 0 if it completed)")
    pa.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N s")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_plan_apply)
    pst = pl_sub.add_parser("status", parents=[common], help="a plan's state, each member's, and its live ETA")
    pst.add_argument("id", metavar="PLAN")
    pst.add_argument("--json", action="store_true")
    pst.set_defaults(func=cmd_plan_status)
    pc = pl_sub.add_parser("cancel", parents=[common],
                           help="release no more members and cancel those before their downtime")
    pc.add_argument("id", metavar="PLAN")
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_plan_cancel)

    cf = sub.add_parser("config", parents=[common], help="check the configuration")
    cf_sub = cf.add_subparsers(dest="config_command", required=True)
    cc = cf_sub.add_parser("check", parents=[common],
                           help="load and check the config, the credentials (and their file modes) and the "
                                "transports without connecting anywhere; prints ok (exit 0) or what to fix "
                                "(exit 2)")
    cc.set_defaults(func=cmd_config_check)

    ca = sub.add_parser("calibrate", parents=[common],
                        help="measure a host's WinRM shell, process start, Hyper-V module load, a read-only "
                             "cmdlet, hashing and SMB rates (a scratch file it deletes; no VM touched) for "
                             "the downtime prediction")
    ca.add_argument("host")
    ca.add_argument("--json", action="store_true")
    ca.add_argument("--scratch-mib", type=int, default=calibration.SCRATCH_MIB_DEFAULT,
                    help=f"size of the scratch file (default {calibration.SCRATCH_MIB_DEFAULT})")
    ca.add_argument("--samples", type=int, default=calibration.SAMPLES_DEFAULT,
                    help=f"samples of each figure, the median kept (default {calibration.SAMPLES_DEFAULT})")
    ca.set_defaults(func=cmd_calibrate)

    me = sub.add_parser("metrics-exporter", parents=[common],
                        help="serve this node's worker metrics (reads $PROMETHEUS_MULTIPROC_DIR)")
    me.add_argument("--port", type=int, default=None, help="default: [metrics] port in quickmig.toml")
    me.add_argument("--addr", default=None, help="default: [metrics] addr in quickmig.toml, else 127.0.0.1")
    me.add_argument("--fleet", action="store_true",
                    help="also export the fleet's state from Redis (in progress, queue depth, live workers); "
                         "run exactly one such exporter per fleet")
    me.set_defaults(func=cmd_metrics_exporter)

    w = sub.add_parser("watch", parents=[common],
                       help="live view of active migrations; with ID, follow one to its end (exit 0 if completed)")
    w.add_argument("id", nargs="?", default=None)
    w.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    w.add_argument("--once", action="store_true", help="without ID: print the current view once and exit")
    w.add_argument("--plan", metavar="PLAN", default=None,
                   help="follow a plan to its end instead: each member's state and the live ETA "
                        "(exit 0 if it completed)")
    w.set_defaults(func=cmd_watch)

    it = sub.add_parser("intake", parents=[common],
                        help="take migration requests from the Redis stream quickmig:requests (any language)")
    it.add_argument("--claim-idle-s", type=float, default=intake.CLAIM_IDLE_S_DEFAULT,
                    help="take over a request another consumer took and left this long (default 60)")
    it.set_defaults(func=cmd_intake)

    orp = sub.add_parser("orphans", parents=[common],
                         help="what a migration whose record Redis lost had left on the hosts, and what the sweep did")
    orp.add_argument("--last", type=int, default=50, help="findings shown, newest first (default 50)")
    orp.add_argument("--json", action="store_true")
    orp.set_defaults(func=cmd_orphans)

    wh = sub.add_parser("webhooks", parents=[common], help="webhook deliveries: run them, or show their log")
    whsub = wh.add_subparsers(dest="webhooks_command", required=True)
    wr = whsub.add_parser("run", parents=[common], help="deliver every [webhooks.NAME] of the config until stopped")
    wr.add_argument("--retry-for-h", type=float, default=webhooks.RETRY_FOR_S_DEFAULT / 3600,
                    help="give an event up this long after its first failed attempt (default 72, at least 24)")
    wr.add_argument("--max-backoff-s", type=float, default=webhooks.MAX_BACKOFF_S_DEFAULT,
                    help="longest wait between two attempts (default 600)")
    wr.set_defaults(func=cmd_webhooks_run)
    ws = whsub.add_parser("status", parents=[common], help="each subscription's deliveries and its latest log")
    ws.add_argument("name", nargs="?", default=None)
    ws.add_argument("--last", type=int, default=20, help="log entries shown (default 20)")
    ws.add_argument("--json", action="store_true")
    ws.set_defaults(func=cmd_webhooks_status)

    for ep in entry_points(group=COMMANDS_GROUP):
        ep.load()(sub, common)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("QUICKMIG_LOG_LEVEL", "WARNING").upper(),
                        format="quickmig: %(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "config"):  # accepted before or after the subcommand
        args.config = None
    try:
        return args.func(args)
    except (RequestError, ConfigError, RecordNotFound, plan_file.PlanError) as e:
        _say(f"quickmig: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except redis.ConnectionError as e:
        _say(f"quickmig: cannot reach Redis: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
