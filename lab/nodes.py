"""`quickmig lab up --nodes N`: worker nodes, each in a network namespace of its own.

Layout, for a lab whose Redis listens on port P (unique while the lab is up, so it names
everything the lab creates here; net = 10.<P / 256>.<P % 256>):

  root side   two addresses on lo, labelled lo:qml<P> (a container's kernel may lack the
              dummy interface type): net.1 (Redis: every Redis port of the lab) and
              net.2 (the hosts: every WinRM and SMB port)
              relay-root: net.1:port and net.2:port -> 127.0.0.1:port
  node i      namespace qml<P>n<i>, veth qml<P>n<i> (root side, net.4i+1/30) to
              qml<P>p<i> (in the namespace, net.4i+2/30, default route via net.4i+1),
              relay-n<i> in it: 127.0.0.1:port -> net.1:port (Redis) or net.2:port (hosts),
              one copy of every worker pool in it

Every process reads the same quickmig.toml (lab/relay.py says why). `partition(..., "redis")`
is one route in the node's namespace (`blackhole net.1/32`): the node still reaches the
hosts; `heal` deletes it. `--link-rate` caps both directions of every node's link (tc tbf).
`teardown` removes every namespace and interface; `sweep_stale` removes those of a lab
whose Redis is gone (a run killed before its `lab down`), so a CI machine keeps none.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess

PREFIX = "qml"
MAX_NODES = 60
# what `--link-rate` takes: tc's rate units (e.g. 1gbit, 10gbit, 500mbit)
RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(kbit|mbit|gbit)$")
RATE_BITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
PARTITIONS = {"redis": "redis_ip", "hosts": "hosts_ip"}


class NodesError(Exception):
    pass


def check_rate(rate: str | None) -> None:
    if rate is not None and not RATE_RE.match(rate):
        raise NodesError(f"--link-rate is a rate such as 1gbit, 10gbit or 500mbit, not {rate!r}")


def plan(redis_port: int, count: int, link_rate: str | None = None) -> dict:
    """The names and addresses of a lab's nodes (nothing is created)."""
    if not 1 <= count <= MAX_NODES:
        raise NodesError(f"--nodes is between 1 and {MAX_NODES}, not {count}")
    check_rate(link_rate)
    net = f"10.{redis_port >> 8}.{redis_port & 0xFF}"
    tag = f"{PREFIX}{redis_port}"
    return {"tag": tag, "label": f"lo:{tag}", "redis_ip": f"{net}.1", "hosts_ip": f"{net}.2",
            "link_rate": link_rate,
            "nodes": [{"name": f"n{i}", "netns": f"{tag}n{i}", "veth": f"{tag}n{i}", "peer": f"{tag}p{i}",
                       "root_ip": f"{net}.{4 * i + 1}", "node_ip": f"{net}.{4 * i + 2}"}
                      for i in range(1, count + 1)]}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    ip = shutil.which("ip")
    if ip is None:
        raise NodesError("`ip` (iproute2) is not installed; `lab up --nodes` needs it (dev.sh installs it)")
    res = subprocess.run([ip, *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise NodesError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _tc(netns: str | None, *args: str) -> None:
    tc = shutil.which("tc")
    if tc is None:
        raise NodesError("`tc` (iproute2) is not installed; --link-rate needs it")
    argv = ([shutil.which("ip") or "ip", "netns", "exec", netns, tc] if netns else [tc]) + list(args)
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise NodesError(f"tc {' '.join(args)}: {res.stderr.strip()}")


def _cap(netns: str | None, dev: str, rate: str) -> None:
    m = RATE_RE.match(rate)
    assert m is not None
    bytes_per_s = float(m.group(1)) * RATE_BITS[m.group(2)] / 8
    # a bucket of 10 ms at the rate (tbf needs at least one timer tick's worth), 50 ms queue
    burst = max(int(bytes_per_s / 100), 64 * 1024)
    _tc(netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", str(burst),
        "latency", "50ms")


def setup(net: dict) -> None:
    """Create the root side's addresses, and each node's namespace, link and routes."""
    for addr in (net["redis_ip"], net["hosts_ip"]):
        _ip("addr", "add", f"{addr}/32", "dev", "lo", "label", net["label"])
    for n in net["nodes"]:
        _ip("netns", "add", n["netns"])
        _ip("link", "add", n["veth"], "type", "veth", "peer", "name", n["peer"], "netns", n["netns"])
        _ip("addr", "add", f"{n['root_ip']}/30", "dev", n["veth"])
        _ip("link", "set", n["veth"], "up")
        _ip("-n", n["netns"], "link", "set", "lo", "up")
        _ip("-n", n["netns"], "addr", "add", f"{n['node_ip']}/30", "dev", n["peer"])
        _ip("-n", n["netns"], "link", "set", n["peer"], "up")
        _ip("-n", n["netns"], "route", "add", "default", "via", n["root_ip"])
        if net.get("link_rate"):
            _cap(None, n["veth"], net["link_rate"])
            _cap(n["netns"], n["peer"], net["link_rate"])


def teardown(net: dict) -> list[str]:
    """Remove what `setup` made (a namespace takes its end of the veth with it); what could
    not be removed, as messages (nothing that is already gone)."""
    left = []
    for n in net["nodes"]:
        if n["netns"] in namespaces():
            res = _ip("netns", "del", n["netns"], check=False)
            if res.returncode != 0:
                left.append(f"namespace {n['netns']}: {res.stderr.strip()}")
        _ip("link", "del", n["veth"], check=False)
    for addr in (net["redis_ip"], net["hosts_ip"]):
        if addr in lo_addresses():
            _ip("addr", "del", f"{addr}/32", "dev", "lo", check=False)
    left += [f"interface {i}" for i in interfaces() if i.startswith(net["tag"])]
    left += [f"address {a} on lo" for a, label in lo_addresses().items() if label == net["label"]]
    return left


def namespaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def interfaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    return [line.split()[0].split("@")[0] for line in _ip("-br", "link", check=False).stdout.splitlines()
            if line.strip()]


def lo_addresses() -> dict[str, str]:
    """{IPv4 address: label} of the root side's lo."""
    if shutil.which("ip") is None:
        return {}
    found = {}
    for line in _ip("-o", "-4", "addr", "show", "dev", "lo", check=False).stdout.splitlines():
        # 1: lo    inet 10.1.2.1/32 scope global lo:qml123\       valid_lft forever ...
        m = re.search(r"\binet ([0-9.]+)/[0-9]+ .*?(\S+?)\\?\s+valid_lft", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def sweep_stale() -> list[str]:
    """Remove the namespaces and interfaces of labs whose Redis no longer answers (their
    `lab down` never ran); returns the tags removed."""
    tags: set[int] = set()
    labels = [label.removeprefix("lo:") for label in lo_addresses().values()]
    for name in namespaces() + interfaces() + labels:
        m = re.match(rf"^{PREFIX}([0-9]+)(?:[np][0-9]+)?$", name)
        if m:
            tags.add(int(m.group(1)))
    removed = []
    for port in sorted(tags):
        if _port_in_use(port):
            continue
        stale = plan(port, MAX_NODES)
        stale["nodes"] = [n for n in stale["nodes"]
                          if n["netns"] in namespaces() or n["veth"] in interfaces()]
        teardown(stale)
        removed.append(stale["tag"])
    return removed


def partition(net: dict, node: str, cut: str = "redis", heal: bool = False) -> None:
    """Cut node `node` off from the lab's Redis (`cut="redis"`) or its hosts, or heal it."""
    if cut not in PARTITIONS:
        raise NodesError(f"a node is cut off from one of {', '.join(PARTITIONS)}, not {cut!r}")
    found = [n for n in net["nodes"] if n["name"] == node]
    if not found:
        raise NodesError(f"no node {node!r} (nodes: {', '.join(n['name'] for n in net['nodes'])})")
    target = f"{net[PARTITIONS[cut]]}/32"
    if heal:
        _ip("-n", found[0]["netns"], "route", "del", target, check=False)
    else:
        _ip("-n", found[0]["netns"], "route", "replace", "blackhole", target)


def relay_pairs(net: dict, ports: dict, hosts: list[str]) -> tuple[list[str], list[str]]:
    """(--pair arguments of the root side's relay, of each node's relay)."""
    redis_ports = [ports["redis"], *([ports["redis-replica"]] if "redis-replica" in ports else []),
                   *ports.get("sentinels", [])]
    host_ports = [p for h in hosts for p in (ports[h]["winrm"], ports[h]["smb"])]
    root, node = [], []
    for ip_key, group in (("redis_ip", redis_ports), ("hosts_ip", host_ports)):
        for p in group:
            root.append(f"{net[ip_key]}:{p}=127.0.0.1:{p}")
            node.append(f"127.0.0.1:{p}={net[ip_key]}:{p}")
    return root, node
