"""The HTTP API under load, in a lab: status reads and SSE fan-out, against the same
server's empty route measured in the same run.

    python bench/api.py [--seconds 8] [--connections 16] [--listeners 100] [--events 200]
                        [--creates 20] [--dir DIR]

Brings a lab up (or uses the one up in --dir), then against its `quickmig api` process:
- status reads: GET /v1/migrations/{id} of a record it writes, and GET /healthz (no I/O:
  the reference), each for --seconds from --connections keep-alive connections, with a
  read token of its own whose rate limit is out of the way; prints req/s, p50, p99 and the ratio status / healthz;
- SSE fan-out: --listeners clients on GET /v1/events, then --events entries appended to
  the events stream (20 a second, as the workers append them); prints how many of
  listeners x events arrived and the delivery latency (append to receipt) p50 and p99, and
  its p50 against a GET /healthz's (the reference);
- creates: POST /v1/migrations for --creates VMs it adds to the lab (each create validates,
  looks the VM up on its host over WinRM and enqueues), from 4 threads, against GET /healthz
  from the same client code (the reference, 10 x as many requests, at least 200); prints creates/s, p50, p99 and the
  ratio; the migrations are then cancelled.
Exit 0 when every request succeeded and every event reached every listener.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


async def listener(port: int, token: str, want: int, got: list[float], ready: asyncio.Event,
                   counter: list[int], n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    counter[0] += 1
    if counter[0] == n:
        ready.set()
    seen = 0
    try:
        while seen < want:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: {"):
                data = json.loads(line[6:])
                got.append(time.time() - float(data["vm"]))
                seen += 1
    finally:
        writer.close()


async def fan_out(port: int, token: str, listeners: int, events: int, r) -> list[float]:
    from workers.model import keys
    got: list[float] = []
    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(listener(port, token, events, got, ready, counter, listeners))
             for _ in range(listeners)]
    await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(0.5)  # every listener's first XREAD is waiting
    for i in range(events):
        # the append time rides in `vm`, so each listener measures its own delivery latency
        r.xadd(keys.EVENTS, {"id": "bench", "vm": repr(time.time()), "source": "hv1", "destination": "hv2",
                             "old": "queued", "new": "snapshotting", "at": repr(time.time()), "seq": str(i + 1)})
        await asyncio.sleep(0.05)
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()
    return got


def timed_requests(url: str, token: str, requests: list[tuple[str, str, dict | None]], threads: int) -> dict:
    """Each (method, path, body) once, from `threads` keep-alive clients: rate, p50, p99, errors."""
    import concurrent.futures

    import httpx
    lat: list[float] = []
    errors: list[str] = []
    out: list[dict] = []

    def work(share: list[tuple[str, str, dict | None]]) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as c:
            for method, path, body in share:
                t = time.perf_counter()
                res = c.request(method, path, json=body)
                lat.append(time.perf_counter() - t)
                if res.status_code >= 300:
                    errors.append(f"{res.status_code} {res.text[:200]}")
                elif method == "POST":
                    out.append(res.json())
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [requests[i::threads] for i in range(threads)]))
    took = time.perf_counter() - t0
    lat.sort()
    return {"rps": len(lat) / took, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "errors": errors, "records": out}


def creates(url: str, token: str, cfg, n: int) -> tuple[dict, dict]:
    """POST /v1/migrations for `n` new VMs against `n` GET /healthz; then cancel them."""
    from lab import orchestrator
    hosts = sorted(cfg.hosts)
    stamp = f"{int(time.time()) % 100000}"
    reqs = []
    for i in range(n):
        src, dst = hosts[i % 2], hosts[(i + 1) % 2]
        name = f"bench-c{stamp}-{i}"
        orchestrator.add_vm(cfg, name, src, disk_mb=16, memory_mb=16, write_rate_kbps=0)
        reqs.append(("POST", "/v1/migrations", {"vm": name, "source": src, "destination": dst}))
    time.sleep(1)  # the guests' heartbeats answer shortly after start
    # the reference: enough requests that the clients' start does not dominate its rate
    ref = timed_requests(url, token, [("GET", "/healthz", None)] * max(10 * n, 200), 4)
    made = timed_requests(url, token, reqs, 4)
    timed_requests(url, token, [("POST", f"/v1/migrations/{r['id']}/cancel", None) for r in made["records"]], 4)
    return ref, made


def main() -> int:
    from api_framework import load

    from lab import orchestrator
    from producer.api import auth as auth_mod
    from workers.model.config import load_config
    from workers.model.record import CLIENT_OPTIONS, Store, new_record
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--listeners", type=int, default=100)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    lab_dir = Path(args.dir or tempfile.mkdtemp(prefix="quickmig-bench-api-"))
    ours = not orchestrator.running(lab_dir)
    if ours:
        orchestrator.up(lab_dir, hosts=2, vms_per_host=0, say=lambda *_: None)
    try:
        cfg = load_config(lab_dir / "quickmig.toml")
        url = json.loads((lab_dir / "endpoints.json").read_text())["api"]
        port = int(url.rsplit(":", 1)[1])
        # a token of its own, whose request rate is not what is measured
        token = auth_mod.new_token()
        with open(cfg.credentials_file, "a") as f:
            f.write("\n" + auth_mod.token_entry(f"bench-{token[:6]}", token, ["migrate"])
                    + "rate_per_minute = 1000000000\n")
        store = Store(cfg.redis_client(**CLIENT_OPTIONS))
        rec = new_record(vm="bench-vm", vm_id="bench-id", source="hv1", destination="hv2", fence=1)
        queued_event = store.create(rec)
        store.set(rec["id"], state="failed", error="a benchmark's record")  # ended: no worker acts on it
        auth = f"Authorization: Bearer {token}\r\n"
        asyncio.run(load(port, ["/healthz"], 1.0, args.connections, auth))  # warm up
        empty = asyncio.run(load(port, ["/healthz"], args.seconds, args.connections, auth))
        status = asyncio.run(load(port, [f"/v1/migrations/{rec['id']}"], args.seconds, args.connections, auth))
        lat = asyncio.run(fan_out(port, token, args.listeners, args.events, store.r))
        create_ref, made = creates(url, token, cfg, args.creates) if args.creates else (None, None)
        # a lab it did not start (the test suite's) keeps no record that no migration made
        store.delete(rec["id"], queued_event)
    finally:
        if ours:
            orchestrator.down(lab_dir, say=lambda *_: None)
    print(f"{'route':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, res in (("healthz", empty), ("status", status)):
        print(f"{name:8} {res['rps']:8.0f} {res['p50_ms']:8.2f} {res['p99_ms']:8.2f} {res['errors']:6}")
    print(f"status reads / healthz: {status['rps'] / empty['rps']:.2f}")
    want = args.listeners * args.events
    lat.sort()
    p50 = 1000 * statistics.median(lat) if lat else float("nan")
    p99 = 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")
    print(f"SSE fan-out: {len(lat)}/{want} deliveries to {args.listeners} listeners, "
          f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; p50 / healthz p50: {p50 / empty['p50_ms']:.1f}")
    ok = len(lat) == want and empty["errors"] == status["errors"] == 0
    if made is not None and create_ref is not None:
        print(f"creates: {made['rps']:.1f}/s (p50 {made['p50_ms']:.1f} ms, p99 {made['p99_ms']:.1f} ms) of "
              f"{args.creates}, errors {len(made['errors'])}; healthz by the same client "
              f"{create_ref['rps']:.0f}/s (p50 {create_ref['p50_ms']:.2f} ms); creates / healthz: "
              f"{made['rps'] / create_ref['rps']:.3f}")
        for e in made["errors"][:5]:
            print(f"  create refused: {e}")
        ok = ok and not made["errors"] and not create_ref["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
