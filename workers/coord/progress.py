"""A migration's copy progress in its record, at least once a second while a file copies.

    rec["progress"] = {"file", "bytes_done", "bytes_total", "rate_bps", "eta_seconds", "at"}

`bytes_done` / `bytes_total` count the whole migration (every planned file; the total is
also `rec["bytes_total"]`), `file` is the destination path being copied, `rate_bps` is the
rate over the last RATE_WINDOW_S seconds, `eta_seconds` the rest at that rate (None
while the rate is unknown), `at` the Unix time of the update. `quickmig watch` reads
these names.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workers.coord.locks import Fenced
from workers.model.record import MigrationRecord, Progress, Store

EVERY_S = 0.5  # twice as often as promised, so a slow Redis round trip never stretches a gap past 1 s
RATE_WINDOW_S = 5.0


class CopyProgress:
    """`state`: the migration's state while it copies; if the record leaves it (cancelled,
    or the reconciler rolled it back), the next progress callback abandons the copy."""

    def __init__(self, store: Store, mid: str, state: str, every_s: float = EVERY_S):
        self.store, self.mid, self.state, self.every_s = store, mid, state, every_s
        self.abandoned: str | None = None
        self.lock = threading.Lock()
        self.samples: deque[tuple[float, int]] = deque()
        self.file: str | None = None
        self.base = 0
        self.file_done = 0

    def snapshot(self, bytes_total: int) -> Progress:
        now = time.monotonic()
        with self.lock:
            done = self.base + self.file_done
            self.samples.append((now, done))
            while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
                self.samples.popleft()
            (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        rate = (b1 - b0) / (t1 - t0) if t1 - t0 > 0.2 else None
        left = max(0, bytes_total - done)
        eta = round(left / rate, 1) if rate else (0.0 if left == 0 else None)
        return {"file": self.file, "bytes_done": done, "bytes_total": bytes_total,
                "rate_bps": round(rate) if rate is not None else None, "eta_seconds": eta, "at": time.time()}

    def _write(self) -> None:
        def change(r: MigrationRecord) -> None:
            if r["state"] != self.state:
                self.abandoned = f"migration {self.mid} is {r['state']} now; copy abandoned"
                return
            r["progress"] = self.snapshot(r.get("bytes_total") or 0)
        self.store.update(self.mid, change)

    @contextmanager
    def file_copy(self, dest_path: str, base_done: int) -> Iterator[Callable[[int, int], None]]:
        """While the body copies `dest_path`, keep the record's progress current; yields
        the engine's progress callback (done, total of this file)."""
        with self.lock:
            self.file, self.base, self.file_done = dest_path, base_done, 0

        def on_bytes(done: int, _total: int) -> None:
            if self.abandoned:
                raise Fenced(self.abandoned)
            with self.lock:
                self.file_done = done

        stop = threading.Event()

        def tick() -> None:
            while True:
                try:
                    self._write()
                except Exception:  # noqa: BLE001 - progress must never break a copy
                    pass
                if stop.wait(self.every_s):
                    return

        t = threading.Thread(target=tick, name="copy-progress", daemon=True)
        t.start()
        try:
            yield on_bytes
        finally:
            stop.set()
            t.join()
            self._write()
