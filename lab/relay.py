"""`python -m lab.relay --pair LISTEN_IP:PORT=TO_IP:PORT ...`: a TCP relay for the lab's nodes.

Every lab server listens on 127.0.0.1 and quickmig.toml names those addresses; a worker node
(lab/nodes.py) is a network namespace with a loopback of its own. So each node runs a relay
that listens on its loopback, on the same ports, and forwards over its veth link to the
root side's addresses, where a second relay forwards to the servers' loopback. Every
process then reads the same quickmig.toml, and what a node's traffic crosses is its own
link: a route in the namespace cuts it off from Redis (the Redis address) or from the hosts
(the hosts' address), and its tc qdisc caps the link's rate.

A connection whose far side cannot be reached is closed at once, as a refused connection.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

CONNECT_TIMEOUT_S = 10
CHUNK = 256 * 1024
READY_LINE = "relay ready"

log = logging.getLogger("quickmig.lab.relay")


def parse_pair(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    try:
        listen, to = text.split("=")
        (lh, lp), (th, tp) = listen.rsplit(":", 1), to.rsplit(":", 1)
        return (lh, int(lp)), (th, int(tp))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pair is LISTEN_IP:PORT=TO_IP:PORT, not {text!r}") from None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close goes through as one
    except (OSError, RuntimeError):
        writer.close()


async def _serve_one(to: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*to), CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError) as e:
        log.info("%s:%d unreachable (%s); connection closed", to[0], to[1], e)
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError, RuntimeError):
                await w.wait_closed()


async def _main(pairs: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    servers = []
    for (lh, lp), to in pairs:
        servers.append(await asyncio.start_server(
            lambda r, w, to=to: _serve_one(to, r, w), lh, lp, reuse_address=True))
    print(READY_LINE, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.relay")
    ap.add_argument("--pair", action="append", type=parse_pair, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay: %(message)s", stream=sys.stdout)
    asyncio.run(_main(args.pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
