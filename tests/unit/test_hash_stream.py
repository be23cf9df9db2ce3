"""The long-lived hashing process (workers/hyperv/hash_stream.py, hash_stream.ps1) against an
emulated host over real WinRM on loopback: one process answers range after range, refuses a
path outside the host's folders and carries on, starts once, and ends with its shell."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import pytest
from winrm.protocol import Protocol

from lab.emulator import costs, scriptfacts
from lab.emulator.wsman import EmulatorServer
from tests.unit import test_emulator_model
from workers.hyperv import scripts
from workers.hyperv.driver import (
    BOOTSTRAP,
    SCRIPT_END,
    STREAM_BOOTSTRAP,
    WARM_BOOTSTRAP,
    WARM_HYPERV_BOOTSTRAP,
    HyperVDriver,
    _command_line,
)
from workers.hyperv.errors import HyperVError
from workers.hyperv.hash_stream import HashStream
from workers.model import chunks
from workers.model.config import Credentials, Host
from workers.model.hostpaths import HostPathError

lab = test_emulator_model.lab  # emulated hosts in process
MiB = 1024 * 1024
ROOT = "D:\\VMs\\hv1"


def serve(h, profile=costs.FAST):
    srv = EmulatorServer(h, 0, "qm", "secret", host_name="hv1", profile=profile)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()


def driver_for(srv, roots=(ROOT,)) -> HyperVDriver:
    host = Host(name="hv1", winrm_endpoint=srv.endpoint, winrm_transport="basic", vm_root=roots[0],
                smb_server="127.0.0.1", smb_port=445, smb_share="hv1")
    return HyperVDriver(host, Credentials("qm", "secret", "qm", "secret"))


def a_file(h, name: str, n_bytes: int) -> tuple[str, list[str]]:
    """A file of random bytes in the host's VM folder: (host path, its chunks' SHA-256s)."""
    hp = f"{ROOT}\\{name}"
    local = h.paths.local(hp)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(os.urandom(n_bytes))
    return hp, chunks.local_chunk_digests(local)


@pytest.fixture
def host(lab):
    _, make = lab
    h = make("hv1")
    srv = serve(h)
    yield h, srv
    stop(srv)


def test_one_process_answers_every_range_and_ends_with_its_shell(host):
    h, srv = host
    hp, want = a_file(h, "memory.bin", 3 * chunks.CHUNK_BYTES + 5 * MiB)  # 4 chunks, the last short
    other, want_other = a_file(h, "leaf.bin", chunks.CHUNK_BYTES + 1)
    d = driver_for(srv)
    with HashStream(d) as s:
        assert len(srv.shells) == 1
        assert s.chunk_digests(hp, 0, 2) == want[0:2]
        assert s.chunk_digests(other, 0, 128) == want_other  # fewer: the file ends sooner
        assert s.chunk_digests(hp, 2, 2) == want[2:4]
        assert s.chunk_digests(hp, 3, 10) == want[3:4]
        assert s.chunk_digests(hp, 4, 1) == []  # past the end
        assert s.answered == 5
    assert srv.shells == {}
    starts = [e for e in costs.read_log(h.state_dir) if e["event"] == "process_start"]
    assert len(starts) == 1 and not [e for e in costs.read_log(h.state_dir) if e["event"] == "module_load"]


def test_checks_from_several_threads_take_turns_in_the_one_process(host):
    h, srv = host
    paths = [a_file(h, f"f{i}.bin", 2 * chunks.CHUNK_BYTES) for i in range(4)]
    with HashStream(driver_for(srv)) as s:
        got: dict[int, list[str]] = {}
        threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, s.chunk_digests(paths[i][0], 0, 2)))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == {i: paths[i][1] for i in range(4)}


def test_the_driver_refuses_a_path_outside_the_hosts_folders_before_it_is_sent(host):
    h, srv = host
    with HashStream(driver_for(srv)) as s:
        with pytest.raises(HostPathError):
            s.chunk_digests("D:\\Elsewhere\\x.bin", 0, 1)
        with pytest.raises(ValueError):
            s.chunk_digests(f"{ROOT}\\x.bin", 0, 129)
        assert s.answered == 0


def stream_process(srv, args: dict, op: str = "hash_stream") -> tuple[Protocol, str, str]:
    """A streaming process sent `op`'s script and its end line, over plain WinRM."""
    p = Protocol(srv.endpoint, transport="basic", username="qm", password="secret")
    shell = p.open_shell(codepage=65001)
    cmd = p.run_command(shell, _command_line(STREAM_BOOTSTRAP), console_mode_stdin=False)
    p.send_command_input(shell, cmd, (scripts.render(op, args) + SCRIPT_END + "\n").encode(), end=False)
    return p, shell, cmd


def read_until(p: Protocol, shell: str, cmd: str, lines: int, timeout_s: float = 10) -> tuple[list[dict], bool, int]:
    """(JSON lines after the ready line, done, exit code) once `lines` arrived or it ended."""
    out, done, rc = b"", False, 0
    deadline = time.monotonic() + timeout_s
    while not done and out.count(b"\n") < lines + 1 and time.monotonic() < deadline:
        o, _e, rc, done = p._raw_get_command_output(shell, cmd)
        out += o
    docs = [json.loads(ln) for ln in out.decode().splitlines()[1:] if ln.strip()]
    return docs, done, rc


def test_the_host_refuses_a_path_outside_its_folders_answers_the_next_and_counts_them_at_the_end(host):
    h, srv = host
    hp, want = a_file(h, "memory.bin", 2 * chunks.CHUNK_BYTES)
    # the roots the driver gives are the VM folder's "inner" subfolder: the file is outside them
    p, shell, cmd = stream_process(srv, {"roots": [f"{ROOT}\\inner"]})
    req = {"path": hp, "scheme": chunks.SCHEME, "first": 0, "count": 2}
    p.send_command_input(shell, cmd, (json.dumps(req) + "\n").encode(), end=False)
    docs, done, _ = read_until(p, shell, cmd, 1)
    assert not done and docs[0]["error_id"] == "PathRefused" and docs[0]["path"] == hp
    assert "outside the configured root(s)" in docs[0]["error"]
    p.close_shell(shell)

    p, shell, cmd = stream_process(srv, {"roots": [ROOT]})
    bad = {"path": "D:\\Elsewhere\\x.bin", "scheme": chunks.SCHEME, "first": 0, "count": 1}
    for r in (bad, {**req, "count": 129}, req):
        p.send_command_input(shell, cmd, (json.dumps(r) + "\n").encode(), end=False)
    p.send_command_input(shell, cmd, b"", end=True)
    docs, done, rc = read_until(p, shell, cmd, 4)
    assert [d.get("error_id") for d in docs[:2]] == ["PathRefused", "InvalidParameter"]
    assert docs[2] == {"path": hp, "first": 0, "chunks": want}
    assert docs[3] == {"answered": 3} and done and rc == 0
    p.close_shell(shell)
    assert srv.shells == {}


def test_the_stream_script_needs_the_streaming_bootstrap_and_that_bootstrap_only_runs_it(host):
    h, srv = host
    d = driver_for(srv)
    with pytest.raises(HyperVError) as e:
        d.run("hash_stream", {"roots": [ROOT]})  # the one-shot bootstrap: no requests to read
    assert e.value.fqid and e.value.fqid.startswith("NoRequestStream")
    p, shell, cmd = stream_process(srv, {}, op="list_vms")
    docs, done, rc = read_until(p, shell, cmd, 1)
    assert done and rc == 1 and docs == []
    p.close_shell(shell)
    assert BOOTSTRAP != STREAM_BOOTSTRAP


def test_the_windows_profile_charges_one_process_start_and_each_range_by_its_bytes(lab):
    _, make = lab
    h = make("hv1")
    profile = dataclasses.replace(costs.WINDOWS, shell_create_s=0.0, process_start_s=0.3, module_load_s=0.5,
                                  op_s={"file_hash": 0.0}, hash_bps=80 * MiB)
    srv = serve(h, profile)
    try:
        hp, want = a_file(h, "memory.bin", 2 * chunks.CHUNK_BYTES)
        t0 = time.monotonic()
        with HashStream(driver_for(srv)) as s:
            started = time.monotonic()
            assert started - t0 >= 0.3
            for first in (0, 1, 0):
                t = time.monotonic()
                assert s.chunk_digests(hp, first, 1) == want[first:first + 1]
                assert time.monotonic() - t >= chunks.CHUNK_BYTES / profile.hash_bps * 0.95
        logged = [(e["event"], e["s"]) for e in costs.read_log(h.state_dir)]
        assert logged == [("process_start", 0.3)]  # once, and no Hyper-V module: the script needs none
    finally:
        stop(srv)


def test_the_emulator_reads_the_end_line_only_from_the_streaming_bootstrap():
    assert scriptfacts.start_facts(_command_line(STREAM_BOOTSTRAP)).script_end == SCRIPT_END
    assert scriptfacts.start_facts(_command_line(STREAM_BOOTSTRAP)).ready_line is not None
    for other in (BOOTSTRAP, WARM_BOOTSTRAP, WARM_HYPERV_BOOTSTRAP):
        assert scriptfacts.start_facts(_command_line(other)).script_end is None
    # reading up to an end line but never leaving the rest to the script is no request stream
    half = STREAM_BOOTSTRAP.replace("$qmRequests = $input; ", "")
    assert scriptfacts.start_facts(_command_line(half)).script_end is None
