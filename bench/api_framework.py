"""Which ASGI framework serves quickmig's API: FastAPI and Litestar, both on uvicorn,
serving the same status read from the same Redis.

    python bench/api_framework.py [--seconds 8] [--connections 16] [--records 200]

Starts a redis-server on loopback and fills it with `--records` migration records
(workers.model.record.Store, as the producer writes them). For each framework it starts a
uvicorn process (one worker, as `quickmig api` runs) with two routes:
  GET /v1/migrations/{id}  the record read with Store.get in a worker thread (the backend
                           every API route uses: the sync Redis client)
  GET /empty               returns {} with no I/O: the reference, the framework's own cost
and loads each for `--seconds` from `--connections` keep-alive HTTP/1.1 connections (an
asyncio client in this process). Prints requests/s, p50 and p99 per framework and route,
and each status read's ratio to the same server's empty route measured in the same run.
The client shares the 2 cores with the server, so absolute numbers are lower than on a
dedicated host; the comparison between the frameworks is what counts.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("fastapi", "litestar")


def _store():
    from workers.model.record import Store
    return Store.from_url(os.environ["BENCH_REDIS_URL"])


def fastapi_app():
    import anyio.to_thread
    from fastapi import FastAPI, HTTPException

    from workers.model.record import RecordNotFound
    store = _store()
    app = FastAPI()

    @app.get("/empty")
    async def empty() -> dict:
        return {}

    @app.get("/v1/migrations/{mid}")
    async def status(mid: str) -> dict:
        try:
            return await anyio.to_thread.run_sync(store.get, mid)
        except RecordNotFound:
            raise HTTPException(404) from None

    return app


def litestar_app():
    import anyio.to_thread
    from litestar import Litestar, get
    from litestar.exceptions import NotFoundException

    from workers.model.record import RecordNotFound
    store = _store()

    @get("/empty")
    async def empty() -> dict:
        return {}

    @get("/v1/migrations/{mid:str}")
    async def status(mid: str) -> dict:
        try:
            return await anyio.to_thread.run_sync(store.get, mid)
        except RecordNotFound:
            raise NotFoundException() from None

    return Litestar([empty, status])


def serve(framework: str, port: int) -> None:
    import uvicorn
    app = {"fastapi": fastapi_app, "litestar": litestar_app}[framework]()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def _conn(port: int, paths: list[str], until: float, lat: list[float], errors: list[str],
                headers: str = "") -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            path = random.choice(paths)
            t0 = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != b"200":
                errors.append(status.decode())
    finally:
        writer.close()


async def load(port: int, paths: list[str], seconds: float, connections: int, headers: str = "") -> dict:
    """GET `paths` (at random) from `connections` keep-alive connections for `seconds`;
    `headers`: extra header lines, each ending in CRLF."""
    lat: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_conn(port, paths, t0 + seconds, lat, errors, headers) for _ in range(connections)))
    took = time.perf_counter() - t0
    lat.sort()
    return {"rps": len(lat) / took, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "errors": len(errors)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--records", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from workers.model.record import new_record
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    rport = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(rport),
                                   "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
                                  stdout=subprocess.DEVNULL)
    os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
    results: dict[str, dict[str, dict]] = {}
    try:
        wait_port(rport)
        store = _store()
        ids = []
        for i in range(args.records):
            rec = new_record(vm=f"vm{i}", vm_id=f"id{i}", source="hv1", destination="hv2", fence=1)
            store.create(rec)
            ids.append(rec["id"])
        for fw in FRAMEWORKS:
            port = free_port()
            server = subprocess.Popen([sys.executable, __file__, "--serve", fw, str(port)],
                                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
            try:
                wait_port(port)
                asyncio.run(load(port, ["/empty"], 1.0, args.connections))  # warm up
                results[fw] = {
                    "empty": asyncio.run(load(port, ["/empty"], args.seconds, args.connections)),
                    "status": asyncio.run(load(port, [f"/v1/migrations/{m}" for m in ids],
                                               args.seconds, args.connections)),
                }
            finally:
                server.terminate()
                server.wait(10)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'framework':10} {'route':7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  vs empty")
    for fw, by_route in results.items():
        for route, r in by_route.items():
            ratio = r["rps"] / by_route["empty"]["rps"]
            print(f"{fw:10} {route:7} {r['rps']:8.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:6}  "
                  f"{ratio:.2f}")
    a, b = (results[f]["status"]["rps"] for f in FRAMEWORKS)
    print(f"status reads, litestar / fastapi: {b / a:.2f}")
    return 0 if all(r["errors"] == 0 for by in results.values() for r in by.values()) else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
