"""The lab's worker nodes (lab/nodes.py) as planned, and the relay that joins them to the
lab's servers (lab/relay.py), on real sockets."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from lab import nodes, relay
from lab.ports import free_port


def test_a_lab_names_its_namespaces_and_links_after_its_redis_port_within_the_kernel_limits():
    net = nodes.plan(65535, nodes.MAX_NODES, "10gbit")
    assert net["redis_ip"] == "10.255.255.1" and net["hosts_ip"] == "10.255.255.2"
    names = [n[k] for n in net["nodes"] for k in ("netns", "veth", "peer")] + [net["label"]]
    assert all(len(x) <= 15 for x in names)  # IFNAMSIZ - 1
    links = [n[k] for n in net["nodes"] for k in ("veth", "peer")]
    namespaces = [n["netns"] for n in net["nodes"]]
    assert len(set(links)) == len(links) and len(set(namespaces)) == len(namespaces)
    addrs = [n[k] for n in net["nodes"] for k in ("root_ip", "node_ip")] + [net["redis_ip"], net["hosts_ip"]]
    assert len(set(addrs)) == len(addrs)
    assert nodes.plan(1234, 2)["redis_ip"] != nodes.plan(1235, 2)["redis_ip"]


@pytest.mark.parametrize("count, rate, words", [(0, None, "--nodes is between 1 and 60, not 0"),
                                                (61, None, "not 61"),
                                                (2, "fast", "--link-rate is a rate such as 1gbit"),
                                                (2, "1 gbit", "not '1 gbit'")])
def test_bad_node_options_are_refused_before_anything_is_made(count, rate, words):
    with pytest.raises(nodes.NodesError, match=words):
        nodes.plan(1234, count, rate)


@pytest.mark.parametrize("args, words", [(["--nodes", "2", "--link-rate", "fast"], "--link-rate is a rate"),
                                         (["--link-rate", "1gbit"], "give --nodes too"),
                                         (["--nodes", "99"], "--nodes is between 1 and 60")])
def test_lab_up_refuses_bad_node_options_in_one_line_with_exit_2(tmp_path, args, words):
    res = subprocess.run([sys.executable, "-m", "producer.cli", "lab", "up", "--dir", str(tmp_path / "lab"), *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "lab" / "lab.json").exists()


def test_the_relays_carry_redis_and_the_hosts_each_to_its_own_address():
    ports = {"redis": 6379, "redis-replica": 6380, "sentinels": [26379], "hv1": {"winrm": 5985, "smb": 445}}
    root, node = nodes.relay_pairs(nodes.plan(1234, 1), ports, ["hv1"])
    assert node == ["127.0.0.1:6379=10.4.210.1:6379", "127.0.0.1:6380=10.4.210.1:6380",
                    "127.0.0.1:26379=10.4.210.1:26379", "127.0.0.1:5985=10.4.210.2:5985",
                    "127.0.0.1:445=10.4.210.2:445"]
    assert root[0] == "10.4.210.1:6379=127.0.0.1:6379" and root[-1] == "10.4.210.2:445=127.0.0.1:445"


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while data := c.recv(65536):
                    c.sendall(data.upper())
    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_the_relay_carries_bytes_both_ways_and_closes_a_connection_it_cannot_carry(tmp_path):
    srv, port = _echo_server()
    dead = free_port()
    listen, listen_dead = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lab.relay", "--pair", f"127.0.0.1:{listen}=127.0.0.1:{port}",
                             "--pair", f"127.0.0.1:{listen_dead}=127.0.0.1:{dead}"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == relay.READY_LINE
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as c:
            payload = b"abc" * 200_000
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # the half-close goes through: the echo ends
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == payload.upper()
        with socket.create_connection(("127.0.0.1", listen_dead), timeout=5) as c:
            c.settimeout(5)
            assert c.recv(10) == b""  # closed: as a refused connection would be
    finally:
        proc.terminate()
        proc.wait(10)
        srv.close()
