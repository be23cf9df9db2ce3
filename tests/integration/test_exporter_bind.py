"""Where the metrics exporter listens: loopback unless quickmig.toml's [metrics] addr says
otherwise, with the command line the deploy units use (no --addr)."""
import os
import re
import sys
import time
from pathlib import Path

import pytest

from lab import processes
from lab.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def listening_on(port: int, timeout_s: float = 30) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp has them) of the sockets listening on `port`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in Path(table).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                addr, p = local.split(":")
                if int(p, 16) == port and state == "0A":  # TCP_LISTEN
                    found.add(addr)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("metrics_table, want", [("", {"0100007F"}), ('addr = "0.0.0.0"\n', {"00000000"})],
                         ids=["default-loopback", "configured-all"])
def test_the_exporter_binds_what_the_config_says_and_loopback_by_default(tmp_path, metrics_table, want):
    port = free_port()
    conf = tmp_path / "quickmig.toml"
    conf.write_text(f'redis_url = "redis://127.0.0.1:1/0"\n[metrics]\nport = {port}\n{metrics_table}')
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    env = dict(os.environ, QUICKMIG_CONFIG=str(conf), PROMETHEUS_MULTIPROC_DIR=str(mdir))
    exporter = processes.spawn([sys.executable, "-m", "producer.cli", "metrics-exporter", "--port", str(port)],
                               tmp_path / "exporter.log", env=env)
    try:
        assert listening_on(port) == want, (tmp_path / "exporter.log").read_text()
    finally:
        processes.stop(exporter)


def test_no_deploy_unit_names_a_listen_address():
    for unit in (ROOT / "deploy" / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                assert not re.search(r"--addr|0\.0\.0\.0", line), (unit.name, line)
