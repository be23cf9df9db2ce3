"""`quickmig lab up/down/add-vm/restart-host`: a whole quickmig environment on this machine.

Layout of a lab directory:
  quickmig.toml, credentials.toml (0600)   what workers and the CLI read
  lab.json                                  every process we started: pid, start time, log
  redis/  hosts/<host>/share/  hosts/<host>/shares/<share>/  hosts/<host>/smbd/  hosts/<host>/emulator/
  guests/  events.jsonl                     the guests' journals, VM start/stop events
  metrics/  logs/
  endpoints.json                            Redis, /metrics and the HTTP API's URL
  api-token (0600)                          an admin bearer token of the lab's HTTP API
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import itertools
import json
import os
import secrets
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from lab import nodes, processes, relay, samba
from lab.emulator import costs, hostprops, messages
from lab.emulator.client import EmulatorClient, EmulatorClientError
from lab.emulator.hostpaths import storage_dir
from lab.ports import free_port
from producer.api import auth
from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError
from workers.model.config import load_config, toml_str

POOLS = {"snapshot": 2, "copy": 2, "cutover": 2}
# `lab up --redis`: one redis-server, or a master with a replica under three sentinels
REDIS_MODES = ("single", "sentinel")
SENTINEL_SERVICE = "quickmig"
SENTINEL_QUORUM = 2
# a master silent for 1 s is down and a failover starts; production's default is 30 s
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
WINRM_USER = "quickmig-lab"
DEFAULT_VM = {"memory_mb": 64, "disk_mb": 128, "write_rate_kbps": 64}
LAB_DEADLINES_S = {"queued": 20, "snapshotting": 15, "copying": 15, "preparing": 15,
                   "cutting_over": 10, "finishing": 15, "rolling_back": 10}


class LabError(Exception):
    pass


def lab_file(lab_dir: Path) -> Path:
    return lab_dir / "lab.json"


def read_lab(lab_dir: Path) -> dict | None:
    try:
        return json.loads(lab_file(lab_dir).read_text())
    except FileNotFoundError:
        return None


def running(lab_dir: Path) -> list[str]:
    lab = read_lab(lab_dir)
    if not lab:
        return []
    return [name for name, entry in lab["processes"].items() if processes.alive(entry)]


def vm_root(host: str) -> str:
    return f"D:\\VMs\\{host}"


def data_storage(hosts: list[str], host: str) -> tuple[str, str]:
    """A lab host's second storage folder and its share: another drive on each host
    (hv1 E:, hv2 F:, ...), named `data` on all of them."""
    letter = chr(ord("E") + hosts.index(host) % 20)
    return f"{letter}:\\Data\\{host}", f"{host}-data"


def redis_url(ports: dict) -> str:
    """The lab's redis_url: its one server, or its sentinels when it runs Redis under Sentinel."""
    if "sentinels" in ports:
        members = ",".join(f"127.0.0.1:{p}" for p in ports["sentinels"])
        return f"redis+sentinel://{members}/{SENTINEL_SERVICE}/0"
    return f"redis://127.0.0.1:{ports['redis']}/0"


def _write_config(lab_dir: Path, hosts: list[str], ports: dict, max_migrations: int = 2,
                  vm_roots: dict[str, str] | None = None, orphan_sweep_s: int | None = None) -> None:
    lines = ["# written by `quickmig lab up`; the lab's hosts speak WinRM Basic over loopback only",
             "redis_url = " + toml_str(redis_url(ports)),
             'credentials_file = "credentials.toml"', "",
             "[lab]", f"dir = {toml_str(str(lab_dir))}", "",
             "[metrics]", f"port = {ports['metrics']}", "",
             "[api]", f"port = {ports['api']}", "",
             "# the lab's reconciler acts sooner than production's defaults (docs/design.md section 3.4)",
             "[reconciler]", "max_nudges = 3",
             # production's sweep (every 10 min, acting on what is 15 min old) unless a test asks
             *([f"orphan_sweep_every_s = {int(orphan_sweep_s)}", f"orphan_grace_s = {int(orphan_sweep_s)}"]
               if orphan_sweep_s else []),
             "deadlines_s = { " + ", ".join(f"{k} = {v}" for k, v in LAB_DEADLINES_S.items()) + " }", ""]
    for h in hosts:
        lines += [f"[hosts.{h}]",
                  "winrm_endpoint = " + toml_str(f"http://127.0.0.1:{ports[h]['winrm']}/wsman"),
                  'winrm_transport = "basic"',
                  f"storage = [{{ name = \"vms\", path = {toml_str((vm_roots or {}).get(h) or vm_root(h))}, "
                  f"share = {toml_str(h)} }},",
                  f"           {{ name = \"data\", path = {toml_str(data_storage(hosts, h)[0])}, "
                  f"share = {toml_str(data_storage(hosts, h)[1])} }}]",
                  'smb_server = "127.0.0.1"',
                  f"smb_port = {ports[h]['smb']}",
                  "smb_encrypt = true",
                  "max_copies = 2",
                  f"max_migrations = {int(max_migrations)}", ""]
    (lab_dir / "quickmig.toml").write_text("\n".join(lines))
    # the SMB password in a file of its own (as systemd's LoadCredential gives it), the
    # WinRM password in credentials.toml: the lab runs both sources
    _write_private(lab_dir / "smb.secret", secrets.token_urlsafe(18) + "\n")
    _write_private(lab_dir / "credentials.toml",
                   "# lab secrets: read by workers only, never sent to Redis\n[default]\n"
                   f"winrm_username = {toml_str(WINRM_USER)}\n"
                   f"winrm_password = {toml_str(secrets.token_urlsafe(18))}\n"
                   f"smb_username = {toml_str(getpass.getuser())}\n"
                   'smb_password_file = "smb.secret"\n'
                   "\n# the HTTP API's tokens (their SHA-256 only); the admin token itself is in api-token\n"
                   + auth.token_entry("lab-admin", _new_api_token(lab_dir), ["admin"]))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _new_api_token(lab_dir: Path) -> str:
    token = auth.new_token()
    _write_private(lab_dir / "api-token", token + "\n")
    return token


def write_endpoints(lab_dir: Path, ports: dict) -> dict:
    """endpoints.json: every scrape endpoint of the lab, for Prometheus or a person."""
    endpoints = {"redis": redis_url(ports),
                 "api": api_url(ports),
                 "metrics": [{"url": f"http://127.0.0.1:{ports['metrics']}/metrics",
                              "target": f"127.0.0.1:{ports['metrics']}", "node": "lab",
                              "serves": "node+fleet"}]}
    (lab_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=1))
    return endpoints


def api_url(ports: dict) -> str:
    return f"http://127.0.0.1:{ports['api']}"


def _wait_api(url: str, entry: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        if not processes.alive(entry):
            raise LabError(f"the HTTP API exited during start; see {entry['log']}")
        if time.monotonic() > deadline:
            raise LabError(f"the HTTP API at {url} is not ready after {timeout_s}s; see {entry['log']}")
        time.sleep(0.2)


@contextlib.contextmanager
def locked(lab_dir: Path):
    """Hold the lab's lock: whoever rewrites lab.json while the supervisor runs (the
    supervisor itself, a test replacing a process) reads and writes it under this lock."""
    with open(Path(lab_dir) / "lab.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def replace_process(lab_dir: Path, name: str, entry: dict) -> None:
    """Record a process started in place of `name` (e.g. a restarted redis-server)."""
    with locked(lab_dir):
        lab = read_lab(lab_dir)
        lab["processes"][name] = entry
        _save(lab_dir, lab)


def _save(lab_dir: Path, lab: dict) -> None:
    tmp = lab_file(lab_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(lab, indent=1))
    tmp.replace(lab_file(lab_dir))


def emulator_client(cfg, host: str):
    c = cfg.credentials(host)
    return EmulatorClient(cfg.host(host).winrm_endpoint, c.winrm_username, c.winrm_password)


def wait_sentinels(ports: dict, timeout_s: float) -> None:
    """Until every sentinel knows the master and its replica is in sync: what a failover needs."""
    deadline = time.monotonic() + timeout_s
    for port in ports["sentinels"]:
        s = redis.Redis(port=port, socket_connect_timeout=1, decode_responses=True)
        while True:
            try:
                m = s.sentinel_master(SENTINEL_SERVICE)
                if int(m.get("num-slaves", 0)) >= 1 and int(m.get("num-other-sentinels", 0)) >= 2:
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"sentinel on port {port} does not see the master, its replica and the other "
                               f"sentinels after {timeout_s:.0f} s; see logs/sentinel-*.log")
            time.sleep(0.2)


def _wait_redis(ports: dict, timeout_s: float) -> None:
    wait_redis_port(ports["redis"], timeout_s)
    if "sentinels" in ports:
        wait_sentinels(ports, timeout_s)


def wait_redis_port(port: int, timeout_s: float) -> None:
    r = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _ports(names: list[str], metrics_port: int | None, redis_mode: str) -> dict[str, Any]:
    ports: dict[str, Any] = {"redis": free_port(), "metrics": metrics_port or free_port(), "api": free_port()}
    if redis_mode == "sentinel":
        ports["redis-replica"] = free_port()
        ports["sentinels"] = [free_port() for _ in range(3)]
    for h in names:
        ports[h] = {"winrm": free_port(), "smb": free_port()}
    return ports


def _redis_command(port: int, data: Path, *more: str) -> list[str]:
    data.mkdir(parents=True, exist_ok=True)
    return [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data), "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", "",
            "--daemonize", "no", *more]


def _start_redis(lab_dir: Path, ports: dict, procs: dict, logs: Path, mode: str) -> None:
    """One redis-server, or (mode `sentinel`) a master, its replica and three sentinels that
    fail over within seconds (production's defaults take 30 s to notice a master gone)."""
    if mode != "sentinel":
        procs["redis"] = processes.spawn(_redis_command(ports["redis"], lab_dir / "redis"), logs / "redis.log")
        return
    procs["redis-master"] = processes.spawn(_redis_command(ports["redis"], lab_dir / "redis-master"),
                                            logs / "redis-master.log")
    procs["redis-replica"] = processes.spawn(
        _redis_command(ports["redis-replica"], lab_dir / "redis-replica", "--replicaof", "127.0.0.1",
                       str(ports["redis"])), logs / "redis-replica.log")
    for i, port in enumerate(ports["sentinels"], 1):
        d = lab_dir / f"sentinel-{i}"
        d.mkdir(exist_ok=True)
        # sentinels rewrite their own config file (what they learn of the topology)
        (d / "sentinel.conf").write_text(
            f"port {port}\nbind 127.0.0.1\ndir {d}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {ports['redis']} {SENTINEL_QUORUM}\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n")
        procs[f"sentinel-{i}"] = processes.spawn(
            [shutil.which("redis-server") or "redis-server", str(d / "sentinel.conf"), "--sentinel"],
            logs / f"sentinel-{i}.log")


def _check_options(hosts: int, locale: str, host_profile: str, redis_mode: str, node_count: int,
                   link_rate: str | None) -> None:
    """LabError naming what to fix, before anything starts."""
    if hosts < 2:
        raise LabError("a lab needs at least 2 hosts to migrate between")
    if locale not in messages.LOCALES:
        raise LabError(f"a lab host speaks one of {', '.join(messages.LOCALES)}, not {locale!r}")
    if host_profile not in costs.PROFILES:
        raise LabError(f"a lab host profile is one of {', '.join(sorted(costs.PROFILES))}, not {host_profile!r}")
    if redis_mode not in REDIS_MODES:
        raise LabError(f"a lab's Redis is one of {', '.join(REDIS_MODES)}, not {redis_mode!r}")
    if node_count:
        try:
            nodes.plan(0, node_count, link_rate)
        except nodes.NodesError as e:
            raise LabError(str(e)) from None
    elif link_rate:
        raise LabError("--link-rate caps the links of --nodes; give --nodes too")


def up(lab_dir: Path, hosts: int = 2, vms_per_host: int = 1, *, vm_options: dict | None = None,
       metrics_port: int | None = None, max_migrations: int = 2, locale: str = messages.DEFAULT_LOCALE,
       vm_roots: dict[str, str] | None = None, host_profile: str = costs.FAST.name, redis_mode: str = "single",
       orphan_sweep_s: int | None = None, node_count: int = 0, link_rate: str | None = None, say=print) -> dict:
    """Start a lab; `locale` is the display language of every host (messages.py); `vm_roots`: a
    host's VM folder other than D:\\VMs\\<host> (e.g. another drive, as hosts of a fleet
    differ), by host name; `host_profile`: what each host operation costs (lab/emulator/costs.py);
    `redis_mode`: `single` (one redis-server) or `sentinel` (a master, a replica, three sentinels);
    `orphan_sweep_s`: sweep for orphans this often, acting on what is this old (tests);
    `node_count`: put a copy of every worker pool in each of that many network namespaces
    (lab/nodes.py), each link capped at `link_rate` (tc's units, e.g. 1gbit) if given."""
    lab_dir = Path(lab_dir).resolve()
    alive = running(lab_dir)
    if alive:
        say(f"lab at {lab_dir} is already up ({len(alive)} processes); nothing changed")
        return read_lab(lab_dir)
    _check_options(hosts, locale, host_profile, redis_mode, node_count, link_rate)
    names = [f"hv{i}" for i in range(1, hosts + 1)]
    unknown = set(vm_roots or {}) - set(names)
    if unknown:
        raise LabError(f"vm_roots names hosts the lab does not have: {', '.join(sorted(unknown))}")
    lab_dir.mkdir(parents=True, exist_ok=True)
    ports = _ports(names, metrics_port, redis_mode)
    _write_config(lab_dir, names, ports, max_migrations, vm_roots, orphan_sweep_s)
    cfg = load_config(lab_dir / "quickmig.toml")
    logs = lab_dir / "logs"
    lab = {"dir": str(lab_dir), "hosts": names, "ports": ports, "processes": {}, "started_at": time.time(),
           "host_profile": host_profile, "redis": redis_mode}
    if node_count:
        lab["net"] = nodes.plan(ports["redis"], node_count, link_rate)
    procs = lab["processes"]
    env = dict(os.environ, QUICKMIG_CONFIG=str(lab_dir / "quickmig.toml"),
               PROMETHEUS_MULTIPROC_DIR=str(lab_dir / "metrics"))
    try:
        _start_redis(lab_dir, ports, procs, logs, redis_mode)
        _save(lab_dir, lab)
        if node_count:
            try:
                nodes.sweep_stale()
                nodes.setup(lab["net"])
            except nodes.NodesError as e:
                raise LabError(f"the nodes' network: {e}") from None
        for h in names:
            tops = [(s.share, storage_dir(lab_dir, h, i, s.share)) for i, s in enumerate(cfg.host(h).storage)]
            cred = cfg.credentials(h)
            conf = samba.write_config(lab_dir / "hosts" / h / "smbd", tops[0][0], tops[0][1], ports[h]["smb"],
                                      cred.smb_username, more_shares=dict(tops[1:]))
            samba.set_password(conf, cred.smb_username, cred.smb_password)
            procs[f"smbd-{h}"] = processes.spawn(samba.command(conf), logs / f"smbd-{h}.log")
            procs[f"emulator-{h}"] = processes.spawn(
                [sys.executable, "-m", "lab.emulator", "--lab-dir", str(lab_dir), "--host", h, "--locale", locale,
                 "--host-profile", host_profile],
                logs / f"emulator-{h}.log", env=env)
            _save(lab_dir, lab)
        metrics_dir = lab_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        procs["metrics"] = processes.spawn(
            # One node, so its exporter also serves the fleet's state (read from Redis).
            [sys.executable, "-m", "producer.cli", "metrics-exporter", "--port", str(ports["metrics"]), "--fleet"],
            logs / "metrics.log", env=env)
        _wait_redis(ports, 20)
        # loopback only (the [api] addr default): the lab's API is plain HTTP
        procs["api"] = processes.spawn([sys.executable, "-m", "producer.api"], logs / "api.log", env=env)
        _save(lab_dir, lab)
        _wait_api(api_url(ports), procs["api"], 30)
        # the Redis intake; a request a killed consumer left is taken over after 5 s, not production's 60
        procs["intake"] = processes.spawn([sys.executable, "-m", "producer.cli", "intake", "--claim-idle-s", "5"],
                                          logs / "intake.log", env=env)
        # webhook deliveries ([webhooks.NAME] in quickmig.toml, read again when it changes); a
        # receiver that is down is tried again within 2 s of its return, not production's 10 min
        procs["webhooks"] = processes.spawn([sys.executable, "-m", "producer.cli", "webhooks", "run",
                                             "--max-backoff-s", "2"], logs / "webhooks.log", env=env)
        _save(lab_dir, lab)
        for h in names:
            samba.wait_ready(ports[h]["smb"], 20)
            emulator_client(cfg, h).wait_ready(20)
        if node_count:
            _start_relays(lab, env, logs)
        _start_workers(lab, env, logs)
        (lab_dir / "beat").mkdir(exist_ok=True)
        procs["beat"] = processes.spawn(
            [sys.executable, "-m", "celery", "-A", "workers.engine.app:app", "beat",
             "-s", str(lab_dir / "beat" / "schedule"), "--loglevel", "INFO"], logs / "beat.log", env=env, cwd=lab_dir)
        _save(lab_dir, lab)
        # last, so it only ever sees a complete lab.json; `down` stops it first
        procs["supervisor"] = processes.spawn(
            [sys.executable, "-m", "lab.supervisor", "--lab-dir", str(lab_dir)], logs / "supervisor.log", env=env)
        _save(lab_dir, lab)
        n = 0
        for h in names:
            for _ in range(vms_per_host):
                n += 1
                emulator_client(cfg, h).create_vm(name=f"vm{n}", **{**DEFAULT_VM, **(vm_options or {})})
    except BaseException:
        down(lab_dir, say=lambda *_: None)
        raise
    endpoints = write_endpoints(lab_dir, ports)
    say(f"lab up at {lab_dir}: hosts {', '.join(names)} ({locale}, host profile {host_profile}), {n} VMs, "
        f"redis on 127.0.0.1:{ports['redis']}" + (f" under 3 sentinels ({redis_url(ports)})"
                                                   if redis_mode == "sentinel" else ""))
    for node in (lab.get("net") or {}).get("nodes", []):
        say(f"node {node['name']}: namespace {node['netns']} ({node['node_ip']}), every worker pool"
            + (f", link capped at {link_rate}" if link_rate else ""))
    for e in endpoints["metrics"]:
        say(f"metrics ({e['serves']}): {e['url']}")
    say(f"api: {endpoints['api']} (in {lab_dir / 'endpoints.json'}), admin token in {lab_dir / 'api-token'}")
    say(f"config: {lab_dir / 'quickmig.toml'}")
    return lab


def _start_workers(lab: dict, env: dict, logs: Path) -> None:
    """Every pool on this machine, or (with nodes) a copy of every pool in each node's
    namespace, its concurrency shared out among the nodes."""
    procs, port, lab_dir = lab["processes"], lab["ports"]["redis"], Path(lab["dir"])
    placed: list[tuple[str, list[str], str]] = []  # (name, argv prefix, celery node name)
    for node in (lab.get("net") or {}).get("nodes", []):
        placed.append((f"-{node['name']}", _in_netns(node["netns"]), f"-{node['name']}"))
    if not placed:
        placed.append(("", [], ""))
    for pool, conc in POOLS.items():
        for suffix, prefix, node_name in placed:
            name = f"worker-{pool}{suffix}"
            procs[name] = processes.spawn(
                [*prefix, sys.executable, "-m", "celery", "-A", "workers.engine.app:app", "worker", "-Q", pool,
                 "-n", f"{pool}@quickmig-lab-{port}{node_name}", "-c", str(max(1, conc // len(placed))),
                 "--loglevel", "INFO"],
                logs / f"{name}.log", env=env, cwd=lab_dir)
            _save(lab_dir, lab)
    for name in procs:
        if name.startswith("worker-"):
            processes.wait_for_log(logs / f"{name}.log", " ready.", 60, procs[name])


def _in_netns(netns: str) -> list[str]:
    return [shutil.which("ip") or "ip", "netns", "exec", netns]


def _start_relays(lab: dict, env: dict, logs: Path) -> None:
    """The relays between the nodes' loopbacks and the servers' (lab/relay.py)."""
    net, procs, lab_dir = lab["net"], lab["processes"], Path(lab["dir"])
    root_pairs, node_pairs = nodes.relay_pairs(net, lab["ports"], lab["hosts"])
    started = {"relay-root": processes.spawn(
        [sys.executable, "-m", "lab.relay", *[a for p in root_pairs for a in ("--pair", p)]],
        logs / "relay-root.log", env=env)}
    procs.update(started)
    _save(lab_dir, lab)
    for node in net["nodes"]:
        name = f"relay-{node['name']}"
        started[name] = procs[name] = processes.spawn(
            [*_in_netns(node["netns"]), sys.executable, "-m", "lab.relay",
             *[a for p in node_pairs for a in ("--pair", p)]], logs / f"{name}.log", env=env)
        _save(lab_dir, lab)
    for name, entry in started.items():
        processes.wait_for_log(logs / f"{name}.log", relay.READY_LINE, 20, entry)


def partition(lab_dir: Path, node: str, cut: str = "redis", heal: bool = False, say=print) -> None:
    """Cut a lab node off from Redis (or its hosts), or heal it (lab/nodes.py)."""
    lab = read_lab(Path(lab_dir).resolve())
    if not lab or not lab.get("net"):
        raise LabError(f"no lab with nodes at {lab_dir} (start one with `lab up --nodes N`)")
    try:
        nodes.partition(lab["net"], node, cut, heal)
    except nodes.NodesError as e:
        raise LabError(str(e)) from None
    say(f"node {node} {'healed: it reaches' if heal else 'cut off from'} the lab's {cut}")


def down(lab_dir: Path, say=print) -> int:
    lab_dir = Path(lab_dir).resolve()
    lab = read_lab(lab_dir)
    if not lab:
        say(f"no lab at {lab_dir}")
        return 0
    # The supervisor first so it restarts nothing we stop, then beat and the workers so
    # nothing acts on a host that is going away, Redis last.
    if "supervisor" in lab["processes"]:
        processes.stop(lab["processes"]["supervisor"])
        lab = read_lab(lab_dir) or lab  # it may have restarted something just before it stopped
    def phase(n: str) -> tuple[bool, bool, bool]:
        return n != "supervisor", not n.startswith(("worker", "beat")), n.startswith(("redis", "sentinel"))
    order = sorted(lab["processes"], key=phase)
    # the processes of one phase stop together: a worker finishing its task does not hold up the next
    for _, names in itertools.groupby(order, key=phase):
        processes.stop_all([lab["processes"][n] for n in names])
    left = [n for n, e in lab["processes"].items() if processes.alive(e)]
    if lab.get("net"):
        left += nodes.teardown(lab["net"])
    if left:
        raise LabError(f"could not stop: {', '.join(left)}")
    lab_file(lab_dir).unlink()
    say(f"lab at {lab_dir} is down ({len(order)} processes stopped)")
    return len(order)


def add_vm(cfg, name: str, host: str, **options) -> dict:
    """Create a VM on a lab host (options as EmulatorClient.create_vm); LabError if the name
    is taken on any host or the host refuses (a VM id it already has, a file in the way)."""
    cfg.host(host)
    for other in cfg.hosts:
        for vm in emulator_client(cfg, other).state()["vms"]:
            if vm["name"] == name:
                raise LabError(f"a VM named {name!r} already exists on {other}")
    opts = {**DEFAULT_VM, **options}
    try:
        vm = emulator_client(cfg, host).create_vm(name=name, **opts)
    except EmulatorClientError as e:
        raise LabError(f"{host} refused the VM: {e.message}") from None
    if vm.get("state") == "Running" and opts.get("heartbeat", True) and opts.get("heartbeat_enabled", True):
        # a VM is ready to move once its guest answers (pre-flight refuses one whose heartbeat is
        # not OK yet): the command returns then, as an administrator would wait for a new VM
        try:
            HyperVDriver(cfg.host(host), cfg.credentials(host)).run(
                "wait_heartbeat", {"vm_id": vm["id"], "timeout_s": 30})
        except HyperVError as e:
            raise LabError(f"{name} was made on {host} but its heartbeat did not come: {e}") from None
    return vm


def set_host(cfg, host: str, props: dict, *, reset: bool = False, guardians_from: str | None = None) -> dict:
    """Change what a lab host offers (lab/emulator/hostprops.py), in one change: `reset` starts
    from a lab host's defaults, `guardians_from` adds that host's guardians to this one's, as an
    administrator imports its certificates with their private keys. LabError if the host
    refuses; then nothing changed."""
    cfg.host(host)
    if guardians_from is not None:
        cfg.host(guardians_from)
    client = emulator_client(cfg, host)
    try:
        change = {**hostprops.defaults(host), **props} if reset else dict(props)
        if guardians_from is not None:
            have = change.get("guardians") or client.host_props()["guardians"]
            known = {g["encryption_thumbprint"] for g in have}
            extra = [g for g in emulator_client(cfg, guardians_from).host_props()["guardians"]
                     if g["encryption_thumbprint"] not in known]
            change["guardians"] = have + extra
        return client.set_host(**change) if change else client.host_props()
    except EmulatorClientError as e:
        raise LabError(f"{host} refused the change: {e.message}") from None


def restart_host(lab_dir: Path, host: str, *, down_s: float = 0.0, say=print) -> dict:
    """Restart one lab host as a reboot would: its Hyper-V shuts down (every running VM saved),
    stays down `down_s` seconds, and starts again, each VM doing what its automatic start
    action says (lab/emulator/lifecycle.py). Done under the lab's lock, so the supervisor never
    sees the emulator gone: a restart is not a crash, and lab.json counts it under `reboots`.
    The host's SMB server stays up. Returns {"host", "saved": [...], "reboots": n}."""
    lab_dir = Path(lab_dir).resolve()
    if not 0 <= down_s <= 3600:
        raise LabError("--down-s must be between 0 and 3600 seconds")
    name = f"emulator-{host}"
    cfg = load_config(lab_dir / "quickmig.toml")
    with locked(lab_dir):
        lab = read_lab(lab_dir)
        if not lab or name not in lab["processes"]:
            raise LabError(f"no lab host {host!r} at {lab_dir} (hosts: {', '.join((lab or {}).get('hosts', []))})")
        entry = lab["processes"][name]
        try:
            done = emulator_client(cfg, host).shutdown_host()
        except EmulatorClientError as e:
            raise LabError(f"{host} did not shut down: {e}") from None
        deadline = time.monotonic() + 30
        while processes.alive(entry) and time.monotonic() < deadline:
            time.sleep(0.05)
        processes.stop(entry)  # what lingers of it after 30 s
        time.sleep(down_s)
        env = dict(os.environ, QUICKMIG_CONFIG=str(lab_dir / "quickmig.toml"),
                   PROMETHEUS_MULTIPROC_DIR=str(lab_dir / "metrics"))
        new = processes.spawn(entry["argv"], Path(entry["log"]), env=env,
                              cwd=Path(entry["cwd"]) if entry.get("cwd") else None)
        new["restarts"] = entry.get("restarts", 0)
        new["reboots"] = entry.get("reboots", 0) + 1
        lab["processes"][name] = new
        _save(lab_dir, lab)
    emulator_client(cfg, host).wait_ready(30)
    say(f"{host} restarted: {len(done['saved'])} running VM(s) saved at shutdown; "
        "each VM did what its automatic start action says")
    return {"host": host, "saved": done["saved"], "reboots": new["reboots"]}
