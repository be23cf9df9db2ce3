"""Benchmark: quickmig's copy engine against Samba's C client on the same bytes.

    .venv/bin/python bench/copy_engine.py [--size-mib 1024] [--runs 3] [--streams 1,2,4] [--modes sign,encrypt]

Starts two real smbd on loopback (lab/samba.py; nothing else, no Redis), writes one random
file of --size-mib MiB into the first one's share, then for each security mode:

- smbclient: `get` from the source share to a local file (on /dev/shm when it fits) plus
  `put` of that file to the destination share, timed together, with
  --client-protection=sign|encrypt;
- quickmig: `workers.smb.file_copy.copy_file` from share to share in a fresh process per run
  (so its peak RSS is the copier's own), including the verification, for each stream
  count. --verify host (default) compares the SHA-256 of every chunk read from the
  source with that of the landed chunk computed by a separate process on the destination
  side (the same machine here; `workers.model.chunks.local_chunk_digests`, what the lab's
  hosts run for the driver's `file_hash`) in a process of its own started before the copy,
  for each range of chunks the copy's verifier asks for while it copies; the WinRM round
  trips of those calls are not included. --verify readback reads the copy back over SMB
  instead.

Before every run of either tool the destination share's copies are deleted, so every run
writes a new file (see `fresh_destination` for why that must be alike for both).

The tools take turns, one round of each per run, so that a change in the machine's load
falls on all of them. Prints MB/s (10^6 bytes/s; median of the runs, min-max) per row, the
copier's peak RSS, the CPU seconds of the client (smbclient, or the copier plus its destination hash) and of
both smbd (median per run), and the ratio quickmig MB/s / smbclient MB/s (>= 1.0 is the
target). Numbers from a shared machine are provisional.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import pwd
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.samba import _group_members, run_samba

ROOT = Path(__file__).resolve().parent.parent

SHARE = "vms"
FILE = "bench.vhdx"

# Runs in a fresh interpreter: one copy, then its time and peak RSS as JSON on stdout.
# The password comes through the environment, never the command line.
CHILD = """
import json, os, subprocess, sys
from workers.smb.file_copy import copy_file
from workers.smb.endpoint import SmbEndpoint
a = json.loads(sys.argv[1])
pw = os.environ["QUICKMIG_BENCH_PASSWORD"]
src = SmbEndpoint("127.0.0.1", a["src_port"], a["share"], a["user"], pw, encrypt=a["encrypt"])
dst = SmbEndpoint("127.0.0.1", a["dst_port"], a["share"], a["user"], pw, encrypt=a["encrypt"])
# The destination host: a process of its own, running before the copy starts (like a lab
# host), that answers the driver's file_hash for a range of chunks of the landed file.
host = subprocess.Popen([sys.executable, "-c", a["host_digest"], a["dest_local"] + ".partial"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def dest_digests(first, count):
    host.stdin.write(f"{first} {count}\\n")
    host.stdin.flush()
    return json.loads(host.stdout.readline())
r = copy_file(src, a["file"], dst, a["dest"], streams=a["streams"], read_ahead=a["read_ahead"],
              dest_digests=dest_digests if a["verify"] == "host" else None)
host.stdin.close()
host.wait()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]  # peak RSS since exec
print(json.dumps({"seconds": r.seconds, "bytes": r.bytes, "rss_mib": int(hwm.split()[1]) / 1024}))
"""

# The destination host's file_hash for ranges of chunks ("first count" lines in, a JSON list
# of digests out), as the lab's emulated hosts compute it.
HOST_DIGEST = """
import json, sys
from workers.model.chunks import local_chunk_digests
for line in sys.stdin:
    first, count = (int(x) for x in line.split())
    print(json.dumps(local_chunk_digests(sys.argv[1], first, count)), flush=True)
"""


def smbd_cpu(servers) -> float:
    """CPU seconds of every smbd of these servers so far (exited children included)."""
    ticks = 0
    for s in servers:
        for pid in _group_members(s.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(servers, fn):
    """fn()'s result, with (client CPU s, smbd CPU s) it cost."""
    c0, s0 = children_cpu(), smbd_cpu(servers)
    out = fn()
    time.sleep(0.5)  # smbd reaps the child that served the connection just closed
    return out, (children_cpu() - c0, smbd_cpu(servers) - s0)


def _smbclient(port: int, user: str, password: str, mode: str, command: str) -> None:
    auth = tempfile.NamedTemporaryFile("w", delete=False, prefix="bench-auth-")
    try:
        os.chmod(auth.name, 0o600)
        auth.write(f"username = {user}\npassword = {password}\n")
        auth.close()
        subprocess.run(["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(port), "-A", auth.name,
                        "-m", "SMB3", f"--client-protection={mode}", "-c", command],
                       check=True, capture_output=True, timeout=1800)
    finally:
        os.unlink(auth.name)


def fresh_destination(env: dict, settle: float) -> None:
    """Delete every tool's copy from the destination share before a run, so that each run,
    of either tool, writes a new file into memory the last one gave back.

    Why it matters: on this machine (a Firecracker VM) page cache for a new file costs ~3.5 s
    of kernel time per GiB when it comes from memory the guest has not touched lately, and
    ~0.4 s when it reuses pages just freed. smbclient's `put` onto its own earlier copy
    truncated it and so reused its pages, while quickmig, which writes `<name>.partial` and
    renames it at the end, always got the expensive ones; that, not the protocol work, was
    most of the destination smbd's extra CPU in earlier tables. `--settle S` waits S seconds
    after the deletion (the other condition, alike for both)."""
    for name in (f"smbclient-{FILE}", f"quickmig-{FILE}", f"quickmig-{FILE}.partial"):
        (env["dst_share"] / name).unlink(missing_ok=True)
    if settle:
        time.sleep(settle)


def run_smbclient(env: dict, mode: str, local: Path) -> float:
    fresh_destination(env, env["settle"])
    t0 = time.monotonic()
    _smbclient(env["src_port"], env["user"], env["password"], mode, f'get {FILE} "{local}"')
    _smbclient(env["dst_port"], env["user"], env["password"], mode, f'put "{local}" smbclient-{FILE}')
    # The local file stays for the next run, whose `get` truncates and rewrites it (reusing
    # its pages, see fresh_destination): deleting it here would hand its 1 GiB of just-freed
    # pages to whichever tool ran next.
    return time.monotonic() - t0


def run_quickmig(env: dict, mode: str, streams: int, read_ahead: bool = False,
                 verify: str = "host") -> tuple[float, float]:
    args = {"host_digest": HOST_DIGEST, "verify": verify, "dest_local": str(env["dst_share"] / f"quickmig-{FILE}"),
            "read_ahead": read_ahead, "src_port": env["src_port"], "dst_port": env["dst_port"], "share": SHARE,
            "user": env["user"], "encrypt": mode == "encrypt", "streams": streams, "file": FILE,
            "dest": f"quickmig-{FILE}"}
    fresh_destination(env, env["settle"])
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], check=True, capture_output=True,
                         text=True, timeout=1800, cwd=ROOT,
                         env=dict(os.environ, QUICKMIG_BENCH_PASSWORD=env["password"]))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["seconds"], res["rss_mib"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", default="1,2,4", help="stream counts for quickmig, comma separated")
    ap.add_argument("--modes", default="sign,encrypt", help="sign and/or encrypt")
    ap.add_argument("--read-ahead", action="store_true", help="quickmig keeps one more READ per stream in flight")
    ap.add_argument("--verify", choices=("host", "readback"), default="host",
                    help="host: the sha256-chunks-8MiB digest of the landed file computed on the destination side "
                         "(what the driver's file_hash runs there); readback: read the copy back over SMB")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after deleting the destination files before each run (default 0)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    if shutil.which("smbd") is None or shutil.which("smbclient") is None:
        print("bench: needs smbd and smbclient (apt-get install samba smbclient)", file=sys.stderr)
        return 2
    streams = [int(s) for s in args.streams.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    work = Path(args.dir or tempfile.mkdtemp(prefix="quickmig-bench-"))
    user = pwd.getpwuid(os.getuid()).pw_name
    password = secrets.token_urlsafe(18)
    servers = []
    try:
        for name in ("src", "dst"):
            servers.append(run_samba(work / name / "state", SHARE, work / name / "share", user, password))
        env = {"settle": args.settle, "dst_share": servers[1].share_path, "src_port": servers[0].port,
               "dst_port": servers[1].port, "user": user, "password": password}
        size = args.size_mib * 2**20
        with open(servers[0].share_path / FILE, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        shm = Path("/dev/shm")
        local_dir = shm if shm.is_dir() and shutil.disk_usage(shm).free > 2 * size else work
        local = local_dir / f"quickmig-bench-{os.getpid()}.bin"

        atexit.register(local.unlink, missing_ok=True)
        rows = []
        print(f"file {args.size_mib} MiB, {args.runs} runs each, MB/s = 10^6 bytes/s, median (min-max); "
              f"quickmig includes verification ({args.verify})", flush=True)
        for mode in modes:
            # One round = every tool once, in turn: a change in the machine's load then
            # falls on all of them alike instead of on whichever ran during it.
            ref, ours = [], {n: [] for n in streams}
            for r in range(args.runs):
                ref.append(measured(servers, lambda mode=mode: run_smbclient(env, mode, local)))
                line = [f"smbclient {size / 1e6 / ref[-1][0]:.0f}"]
                for n in streams:
                    ours[n].append(measured(servers, lambda mode=mode, n=n: run_quickmig(env, mode, n, args.read_ahead,
                                                                                          args.verify)))
                    line.append(f"quickmig/{n} {size / 1e6 / ours[n][-1][0][0]:.0f}")
                print(f"  {mode} round {r + 1}: " + ", ".join(line) + " MB/s", flush=True)
            ref_mbs = [size / 1e6 / s for s, _ in ref]
            rows.append((mode, "smbclient get+put", "-", ref_mbs, None, None, [c for _, c in ref]))
            for n in streams:
                mbs = [size / 1e6 / s for (s, _), _ in ours[n]]
                rss = max(r for (_, r), _ in ours[n])
                ratio = statistics.median(mbs) / statistics.median(ref_mbs)
                rows.append((mode, "quickmig copy_file", str(n), mbs, rss, ratio, [c for _, c in ours[n]]))

        print()
        print(f"{'mode':<8} {'tool':<20} {'streams':>7} {'MB/s':>6} {'(min-max)':>12} {'peak RSS':>9} {'ratio':>6} "
              f"{'client CPU':>10} {'smbd CPU':>9}")
        for mode, tool, n, mbs, rss, ratio, cpu in rows:
            spread = f"({min(mbs):.0f}-{max(mbs):.0f})"
            client, smbd = (statistics.median(c[k] for c in cpu) for k in (0, 1))
            print(f"{mode:<8} {tool:<20} {n:>7} {statistics.median(mbs):>6.0f} {spread:>12} "
                  f"{'' if rss is None else f'{rss:.0f} MiB':>9} {'' if ratio is None else f'{ratio:.2f}':>6} "
                  f"{client:>9.2f}s {smbd:>8.2f}s")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (numbers are provisional "
              "on a shared machine)")
    finally:
        for s in servers:
            s.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
