"""The `quickmig` command.

Exit status: 0 success; 1 a migration that ended other than completed; 2 a request
refused or a configuration problem (one line on stderr saying what to fix).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib.metadata import entry_points

import redis

from producer import calibration, intake, report, terminal, watch, webhooks
from producer.migrations import MigrationRequest, Producer, RequestError
from producer.remote import Remote
from workers.coord.throttle import Throttle, ThrottleError, parse_rate
from workers.model import file_plan, host_profile
from workers.model.config import ConfigError, find_config_path, load_config
from workers.model.record import RecordNotFound, Store
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
            print(f"pre-flight: {'ok' if plan['preflight']['ok'] else '; '.join(plan['preflight']['problems'])}")
            copy = f"{plan['copy_bytes'] / 2**20:.0f} MiB in {plan['predicted_copy_seconds']:.1f} s"
            print(f"predicted: copy {copy}, downtime {plan['predicted_downtime_seconds']:.1f} s")
            if plan["rates"].get("sources"):  # an API server of an older version sends none
                _say(f"predicted from: {report.sources(plan['rates']['sources'])}")
        return EXIT_OK
    rec = p.enqueue(req)
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
    t = Throttle(Store.from_url(cfg.broker_url()).r)
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
    r = Store.from_url(cfg.broker_url()).r
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
            fleet_redis = redis.Redis.from_url(cfg.broker_url(), decode_responses=True, socket_timeout=10,
                                               socket_connect_timeout=5)
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


def cmd_webhooks_status(args) -> int:
    cfg = load_config(args.config)
    subs = [s for s in webhooks.subscriptions(cfg) if args.name is None or s.name == args.name]
    if args.name is not None and not subs:
        known = ", ".join(sorted(cfg.webhooks)) or "none"
        raise ConfigError(f"no webhook {args.name!r} in the config (it has: {known})")
    r = redis.Redis.from_url(cfg.broker_url(), decode_responses=True, socket_timeout=30)
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
    w.set_defaults(func=cmd_watch)

    it = sub.add_parser("intake", parents=[common],
                        help="take migration requests from the Redis stream quickmig:requests (any language)")
    it.add_argument("--claim-idle-s", type=float, default=intake.CLAIM_IDLE_S_DEFAULT,
                    help="take over a request another consumer took and left this long (default 60)")
    it.set_defaults(func=cmd_intake)

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
    except (RequestError, ConfigError, RecordNotFound) as e:
        _say(f"quickmig: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except redis.ConnectionError as e:
        _say(f"quickmig: cannot reach Redis: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
