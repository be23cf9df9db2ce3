"""`quickmig watch`: a live view of active migrations, read from their records in Redis.

Progress comes from the record's `progress` ({file, bytes_done, bytes_total, rate_bps,
eta_seconds, at}) and `bytes_total` when the copy step writes them; without a rate the
view derives one from successive polls, and without a total it shows bytes only.
On a terminal the view redraws in place; otherwise it prints plain lines, one per change.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from producer import terminal
from workers.model import states

BAR_WIDTH = 20
MOVING = (states.COPYING, states.CUTTING_OVER)  # the states in which bytes flow
PLAIN_EVERY_S = 10.0  # piped `watch ID`: a line at least this often, so downtime visibly ticks
PLAIN_STEP_PCT = 5
PLAIN_STEP_BYTES = 256 * 2**20
CLEAR = "\x1b[H\x1b[2J"


def _size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def phase_label(rec: dict) -> str:
    return states.PHASE_OF.get(rec["state"], rec["state"])


def downtime_so_far(rec: dict, now: float) -> float | None:
    """Seconds the VM has been down: final once known, else counting since Save-VM."""
    if rec.get("downtime_seconds") is not None:
        return rec["downtime_seconds"]
    if rec.get("save_started_at") and rec["state"] in (states.CUTTING_OVER, states.ROLLING_BACK):
        return now - rec["save_started_at"]
    return None


@dataclass
class Progress:
    done: float
    total: float | None
    rate_bps: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


@dataclass
class RateMeter:
    """Derives bytes/s per migration from successive polls when the record has no rate."""
    last: dict = field(default_factory=dict)

    def rate(self, mid: str, done: float, at: float) -> float | None:
        prev = self.last.get(mid)
        if prev is not None and done == prev[0]:  # the same sample again, or no progress yet
            return prev[2] if len(prev) > 2 else None
        if prev is None or done < prev[0] or at <= prev[1]:
            self.last[mid] = (done, at)
            return None
        r = (done - prev[0]) / (at - prev[1])
        self.last[mid] = (done, at, r)
        return r


def progress(rec: dict, now: float, meter: RateMeter | None = None) -> Progress:
    p = rec.get("progress") or {}
    done = p.get("bytes_done", rec.get("bytes_copied") or 0) or 0
    total = rec.get("bytes_total") or p.get("bytes_total")
    rate = p.get("rate_bps")
    if rate is None and meter is not None:
        rate = meter.rate(rec["id"], done, p.get("at") or now)
    started = rec.get("phases", {}).get(phase_label(rec), {}).get("start")
    if rate is None and p and started and (p.get("at") or now) > started and rec["state"] == states.COPYING:
        rate = done / ((p.get("at") or now) - started)  # average since the copy began
    eta = p.get("eta_seconds")
    if eta is None and rate and total:
        eta = max(0.0, (total - done) / rate)
    if rec["state"] not in MOVING:
        rate, eta = None, None
        if rec["state"] in (states.PREPARING, states.CUTTING_OVER, states.FINISHING) and total:
            done = max(done, total)  # the frozen set is across; what is left moves in the downtime
    return Progress(done, total, rate, eta)


def line(rec: dict, now: float, meter: RateMeter | None = None) -> str:
    rec = terminal.clean(rec)  # the view writes its own escapes; none may come from a record
    p = progress(rec, now, meter)
    frac = p.fraction
    pct = f"{frac * 100:3.0f}%" if frac is not None else "   -"
    size = f"{_size(p.done)}/{_size(p.total)}" if p.total else _size(p.done)
    rate = f"{p.rate_bps / 1e6:.1f} MB/s" if p.rate_bps else "-"
    down = downtime_so_far(rec, now)
    route = f"{rec['source']}->{rec['destination']}"
    return (f"{rec['id']}  {rec['vm'][:20]:<20} {route:<12} {phase_label(rec):<10}"
            f"{bar(frac)} {pct}  {size:<21} {rate:>11}  eta {_duration(p.eta_s):>7}"
            f"  down {(f'{down:.1f}s' if down is not None else '-'):>7}"
            + (f"  {rec['waiting']}" if rec.get("waiting") else ""))


HEADER = (f"{'ID':<16}  {'VM':<20} {'ROUTE':<12} {'PHASE':<10}{'PROGRESS':<{BAR_WIDTH + 2}} {'%':>4}  "
          f"{'BYTES':<21} {'RATE':>11}  {'ETA':>11}  {'DOWNTIME':>12}")


def screen(recs: list[dict], now: float, meter: RateMeter | None = None) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    head = f"quickmig watch  {stamp}  {len(recs)} active"
    if not recs:
        return head + "\n(no active migrations)"
    return "\n".join([head, HEADER] + [line(r, now, meter) for r in recs])


def _plain_key(rec: dict, now: float, meter: RateMeter) -> tuple:
    """What must change before piped output prints again: state, or a step of progress."""
    p = progress(rec, now, meter)
    step = int((p.fraction or 0) * 100) // PLAIN_STEP_PCT if p.total else int(p.done) // PLAIN_STEP_BYTES
    return rec["id"], rec["state"], step, rec.get("waiting")


def _unnoted(recs: list[dict]) -> list[dict]:
    return recs


def watch_all(store, *, interval_s: float = 1.0, once: bool = False, out=sys.stdout,
              tty: bool | None = None, iterations: int | None = None, note=_unnoted) -> int:
    """`note(recs)` may add what the records alone do not say (why a migration waits)."""
    tty = out.isatty() if tty is None else tty
    meter = RateMeter()
    n = 0
    last_plain, last_at = None, 0.0
    while True:
        now = time.time()
        recs = note(store.active())
        text = screen(recs, now, meter)
        if once:
            out.write(text + "\n")
        elif tty:
            out.write(CLEAR + text + "\n")
        else:
            key = [_plain_key(r, now, meter) for r in recs]
            if key != last_plain or now - last_at >= PLAIN_EVERY_S:
                out.write(text + "\n\n")
                last_plain, last_at = key, now
        out.flush()
        n += 1
        if once or (iterations is not None and n >= iterations):
            return 0
        time.sleep(interval_s)


def watch_one(store, mid: str, *, interval_s: float = 1.0, out=sys.stdout, tty: bool | None = None,
              note=_unnoted) -> dict:
    """Follow one migration to its end state and return its final record."""
    tty = out.isatty() if tty is None else tty
    meter = RateMeter()
    last_plain, last_at = None, 0.0
    while True:
        rec = note([store.get(mid)])[0]
        now = time.time()
        if tty:
            out.write("\r\x1b[K" + line(rec, now, meter))
        else:
            # plain output: a line per change of state or progress step, and every PLAIN_EVERY_S
            key = _plain_key(rec, now, meter)
            if key != last_plain or now - last_at >= PLAIN_EVERY_S:
                out.write(time.strftime("%H:%M:%S ", time.localtime(now)) + line(rec, now, meter) + "\n")
                last_plain, last_at = key, now
        out.flush()
        if rec["state"] in states.ENDS:
            if tty:
                out.write("\n")
            return rec
        time.sleep(interval_s)


def watch_plan(status: Callable[[], dict], lines: Callable[[dict], list[str]], *, interval_s: float = 1.0,
               out=sys.stdout, tty: bool | None = None) -> dict:
    """Follow a plan to its end (`status()` reads it, `lines(status)` shows it) and return its
    last status. On a terminal the view is redrawn in place; otherwise it is printed again
    whenever it changes, and every PLAIN_EVERY_S."""
    tty = out.isatty() if tty is None else tty
    last, last_at = None, 0.0
    while True:
        st = status()
        now = time.time()
        shown = [terminal.text(x) for x in lines(st)]
        if tty:
            out.write("\x1b[H\x1b[2J" + "\n".join(shown) + "\n")
        else:
            # the ETA moves on its own: a change of what the members do is what earns a new print
            key = shown[1:] + [st["state"]]
            if key != last or now - last_at >= PLAIN_EVERY_S:
                out.write(time.strftime("%H:%M:%S\n", time.localtime(now)) + "\n".join(shown) + "\n")
                last, last_at = key, now
        out.flush()
        if st["state"] != "running":
            return st
        time.sleep(interval_s)
