"""`python -m lab.emulator --lab-dir DIR --host hv1 [--locale de-DE] [--host-profile windows]`: serve one emulated
Hyper-V host, whose messages are in the given display language (messages.py).

Reads DIR/quickmig.toml (the host's winrm_endpoint gives the loopback port, vm_root the
host path of its share) and DIR/credentials.toml (WinRM user and password, Basic auth).
Ready when GET /lab/ping answers (EmulatorClient.wait_ready), and when the line
"emulator <host> ready on <endpoint>" is on stderr and DIR/hosts/<host>/emulator/ready.json
exists ({"pid", "endpoint", "started_at"}). SIGTERM/SIGINT stop it cleanly: guest writers
stop after their last acknowledged write, VM states are kept (a Running VM is Running again
on the next start, as after a restart of VMMS alone; see lifecycle.py). POST /lab/shutdown
ends it as the host's own shutdown instead (`quickmig lab restart-host`): running VMs are
saved, and the next start is the host's boot, each VM doing what its automatic start action
says (model.BOOT_MARKER).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from lab.emulator import costs, messages
from lab.emulator.model import HyperVHost
from lab.emulator.wsman import EmulatorServer
from workers.model.config import ConfigError, load_config

log = logging.getLogger("lab.emulator")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.emulator", description="Emulated Hyper-V host (WinRM)")
    ap.add_argument("--lab-dir", required=True, type=Path)
    ap.add_argument("--host", required=True, help="host name from DIR/quickmig.toml")
    ap.add_argument("--log-level", default=os.environ.get("QUICKMIG_EMULATOR_LOG", "INFO"))
    ap.add_argument("--locale", default=messages.DEFAULT_LOCALE, choices=messages.LOCALES,
                    help="the host's display language: every message it writes is in it")
    ap.add_argument("--host-profile", default=costs.FAST.name, choices=sorted(costs.PROFILES),
                    help="what each operation costs: fast (the lab's own speed) or windows (process starts, "
                         "module loads and cmdlets as on a Windows Server host; lab/emulator/costs.py)")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(ns.log_level).upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {ns.host} %(levelname)s %(name)s: %(message)s")

    lab_dir = ns.lab_dir.resolve()
    try:
        cfg = load_config(lab_dir / "quickmig.toml")
        host = cfg.host(ns.host)
        creds = cfg.credentials(ns.host)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    url = urlsplit(host.winrm_endpoint)
    if url.scheme != "http" or url.hostname not in LOOPBACK or not url.port or url.path != "/wsman":
        log.error("winrm_endpoint %r must be http://127.0.0.1:<port>/wsman (the emulator serves loopback only)",
                  host.winrm_endpoint)
        return 2


    # one process per host: a second one would run the same guests twice
    state_dir = lab_dir / "hosts" / host.name / "emulator"
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
        log.error("another emulator for %s is running (pid %s)", host.name, other)
        return 2
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)

    # listen first, then load the registry (which restarts running guests): a process that
    # cannot serve never touches a guest
    bind = "::1" if url.hostname == "::1" else "127.0.0.1"
    try:
        if bind == "::1":
            EmulatorServer.address_family = socket.AF_INET6
        server = EmulatorServer(None, url.port, creds.winrm_username, creds.winrm_password, bind=bind,
                                host_name=host.name, profile=costs.PROFILES[ns.host_profile])
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", bind, url.port, e.strerror or e)
        return 2
    model = HyperVHost(lab_dir, host.name, host.vm_root, locale=ns.locale, faults=server.faults,
                       more_storage=[(s.path, s.share) for s in host.storage[1:]])
    server.model = model

    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            log.info("signal %d: stopping", signum)
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    ready = model.state_dir / "ready.json"
    tmp = ready.with_name(".ready.json.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "endpoint": host.winrm_endpoint, "started_at": time.time()}))
    os.replace(tmp, ready)
    log.info("emulator %s ready on %s (pid %d, vm_root %s, share %s, locale %s, host profile %s)", host.name,
             host.winrm_endpoint, os.getpid(), host.vm_root, model.share, model.locale, ns.host_profile)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        model.shutdown()
        ready.unlink(missing_ok=True)
        log.info("emulator %s stopped", host.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
