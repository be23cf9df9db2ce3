"""Fixtures that start real parts: redis-server, and a whole lab (Redis, smbd per host,
emulated Hyper-V hosts over WinRM, the three Celery worker pools)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import processes
from lab.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    d = tmp_path_factory.mktemp("redis")
    port = free_port()
    entry = processes.spawn([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no"],
                            d / "redis.log")
    import redis
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            import time
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    processes.stop(entry)


class Lab:
    def __init__(self, lab_dir: Path):
        from workers.model.config import load_config
        self.dir = lab_dir
        self.config_path = lab_dir / "quickmig.toml"
        self.cfg = load_config(self.config_path)

    def env(self) -> dict:
        return dict(os.environ, QUICKMIG_CONFIG=str(self.config_path))

    def cli(self, *args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "producer.cli", *args], env=self.env(), cwd=self.dir,
                              capture_output=True, text=True, timeout=timeout)

    def cli_json(self, *args, timeout=300):
        res = self.cli(*args, timeout=timeout)
        assert res.stdout.strip(), f"no output from {args}: rc={res.returncode} stderr={res.stderr}"
        return res, json.loads(res.stdout)

    def emulator(self, host: str):
        from lab.orchestrator import emulator_client
        return emulator_client(self.cfg, host)

    def add_vm(self, name: str, host: str = "hv1", **opts):
        from lab.orchestrator import add_vm
        opts.setdefault("disk_mb", 16)
        opts.setdefault("memory_mb", 16)
        return add_vm(self.cfg, name, host, **opts)

    def wait_vm_state(self, host: str, name: str, state: str, bound_s: float = 120) -> None:
        """Until the VM named `name` is in `state` on `host` (the emulator's own view)."""
        import time
        deadline = time.monotonic() + bound_s
        while not any(v["name"] == name and v["state"] == state for v in self.emulator(host).state()["vms"]):
            assert time.monotonic() < deadline, f"{name} was not {state} on {host} within {bound_s:.0f} s"
            time.sleep(0.05)

    def verify(self, name: str) -> dict:
        res, out = self.cli_json("lab", "verify", name, "--json")
        return out

    def redis(self):
        return self.cfg.redis_client(decode_responses=True)

    def redis_state(self) -> dict:
        """Every quickmig key's value, except those that move on their own (worker
        heartbeats, the reconciler's pass lock, the API tokens' request logs, which expire,
        the bandwidth limits' schedule, which another module's copy still running moves):
        what a refused request must not change."""
        from workers.model import keys
        r = self.redis()
        moving = (keys.workers(""), keys.api_rate(""), keys.throttle_state(keys.PREFIX))
        return {k: r.dump(k) for k in r.scan_iter("quickmig:*")
                if not k.startswith(moving) and k != keys.RECONCILER_LOCK}


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    from lab import orchestrator
    lab_dir = tmp_path_factory.mktemp("lab")
    orchestrator.up(lab_dir, hosts=3, vms_per_host=0, say=lambda *_: None)
    try:
        yield Lab(lab_dir)
    finally:
        orchestrator.down(lab_dir, say=lambda *_: None)


@pytest.fixture(scope="session")
def lab_class():
    """The Lab helper, for tests that need a lab of their own (e.g. one they kill workers in)."""
    return Lab


@contextlib.contextmanager
def _own_lab(tmp_path_factory, name: str, hosts: int = 3, **up_options):
    from lab import orchestrator
    from producer.migrations import Producer
    lab_dir = tmp_path_factory.mktemp(name)
    orchestrator.up(lab_dir, hosts=hosts, vms_per_host=0, say=lambda *_: None, **up_options)
    passed = False
    try:
        lab = Lab(lab_dir)
        lab.producer = Producer(lab.cfg)
        yield lab
        passed = True
    finally:
        orchestrator.down(lab_dir, say=lambda *_: None)
        _free_lab_disk(lab_dir, keep_logs=not passed)


def _free_lab_disk(lab_dir: Path, keep_logs: bool) -> None:
    """A module's own lab holds hundreds of MB of disk images, and a whole run starts dozens:
    left until the session ends they filled a CI machine's disk. A lab whose module failed
    keeps its logs and configuration (what a reader needs) and loses only its big files."""
    if not keep_logs:
        shutil.rmtree(lab_dir, ignore_errors=True)
        return
    for f in lab_dir.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file() and not f.is_symlink() and f.stat().st_size > 1 << 20:
                f.unlink()


@pytest.fixture(scope="session")
def own_lab(tmp_path_factory):
    """`with own_lab("name") as lab:` a lab of a test module's own (one whose processes it
    stops, kills or cuts off, or one started with other `orchestrator.up` options, e.g.
    locale="de-DE"), its Lab helper carrying a Producer as `lab.producer`."""
    return functools.partial(_own_lab, tmp_path_factory)
