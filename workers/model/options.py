"""What a migration request may ask of the cutover, validated once by the producer.

The record carries the parsed form under `options` (JSON, base units): workers read it
with `of(rec)` and never parse user text themselves.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers.model import hostpaths
from workers.model.errors import QuickmigError

ON_EXCEED = ("abort", "proceed")
MAX_ROUNDS_LIMIT = 20
DEFAULT_MAX_ROUNDS = 3
MAX_KEEP_SOURCE_HOURS = 24 * 30
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class OptionError(QuickmigError, ValueError):
    """The message says which option is wrong and what it accepts."""


@dataclass(frozen=True)
class Options:
    max_downtime_s: float | None = None      # cut over once the predicted downtime is at most this
    on_exceed: str = "abort"                 # ... and if rounds run out above it
    max_rounds: int = DEFAULT_MAX_ROUNDS     # pre-copy rounds after the base copy (0: single round)
    not_before: float | None = None          # Unix time the cutover window opens
    window_s: float | None = None            # how long it stays open
    keep_source_hours: float = 0.0           # keep the saved source VM registered this long
    destination_path: str | None = None      # every file under this destination folder
    storage_map: list = field(default_factory=list)  # [source prefix, destination prefix] pairs
    switch_map: list = field(default_factory=list)   # [source switch, destination switch] pairs
    start: bool = False                      # a cold move (Off or Saved VM): start it on the destination
    eject_unmovable_isos: bool = False       # empty, on the destination's copy, a DVD drive whose ISO cannot go

    def window_end(self) -> float | None:
        if self.window_s is None:
            return None
        return (self.not_before or 0.0) + self.window_s


def duration_s(text: object, what: str) -> float:
    """'90', '90s', '15m', '2h', '1d' (or a number) -> seconds > 0."""
    if isinstance(text, bool):
        raise OptionError(f"{what} must be a duration such as 90s, 15m or 2h")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise OptionError(f"{what} must be a duration such as 90s, 15m or 2h, not {text!r}")
        value = float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    if not 0 < value <= 366 * 86400:
        raise OptionError(f"{what} must be more than 0 and at most a year")
    return value


def moment(text: object, what: str = "--not-before") -> float:
    """ISO 8601 time (no zone: UTC) or Unix seconds -> Unix seconds."""
    if isinstance(text, bool):
        raise OptionError(f"{what} must be a time such as 2026-11-26T03:00:00Z")
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise OptionError(f"{what} must be a time such as 2026-11-26T03:00:00Z, not {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def parse(*, max_downtime: object = None, on_exceed: object = None, max_rounds: object = None,
          not_before: object = None, window: object = None, keep_source_hours: object = None,
          destination_path: object = None, storage_map: object = None, switch_map: object = None,
          start: object = None, eject_unmovable_isos: object = None, now: float | None = None) -> dict[str, Any]:
    """Validate raw request options (as a caller sent them: text from the command line, or
    JSON values); returns the JSON form for the record."""
    now = time.time() if now is None else now
    o: dict[str, Any] = {}
    if max_downtime is not None:
        o["max_downtime_s"] = duration_s(max_downtime, "--max-downtime")
    if on_exceed is not None:
        if on_exceed not in ON_EXCEED:
            raise OptionError(f"--on-exceed must be one of {', '.join(ON_EXCEED)}, not {on_exceed!r}")
        if max_downtime is None:
            raise OptionError("--on-exceed only means something with --max-downtime")
        o["on_exceed"] = on_exceed
    if isinstance(max_rounds, str):  # from the command line
        max_rounds = int(max_rounds) if max_rounds.strip().isdigit() else max_rounds
    if isinstance(keep_source_hours, str):
        try:
            keep_source_hours = float(keep_source_hours)
        except ValueError:
            pass
    if max_rounds is not None:
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or not 0 <= max_rounds <= MAX_ROUNDS_LIMIT:
            raise OptionError(f"--max-rounds must be a whole number from 0 to {MAX_ROUNDS_LIMIT}")
        o["max_rounds"] = max_rounds
    if not_before is not None:
        o["not_before"] = moment(not_before)
    if window is not None:
        o["window_s"] = duration_s(window, "--window")
        o.setdefault("not_before", now)
        if o["not_before"] + o["window_s"] <= now:
            raise OptionError("the cutover window (--not-before + --window) has already closed")
    if keep_source_hours is not None:
        if (isinstance(keep_source_hours, bool) or not isinstance(keep_source_hours, (int, float))
                or not 0 < keep_source_hours <= MAX_KEEP_SOURCE_HOURS):
            raise OptionError(f"--keep-source must be a number of hours above 0, at most {MAX_KEEP_SOURCE_HOURS}")
        o["keep_source_hours"] = float(keep_source_hours)
    o.update(_placement(destination_path, storage_map, switch_map))
    o.update(_flag(start, "start", "--start"))
    o.update(_flag(eject_unmovable_isos, "eject_unmovable_isos", "--eject-unmovable-isos"))
    return o


def _flag(value: object, name: str, flag: str) -> dict[str, Any]:
    if value is None or value is False:
        return {}
    if value is not True:
        raise OptionError(f"{flag} takes no value (true or false over the API)")
    return {name: True}


def _placement(destination_path: object, storage_map: object, switch_map: object) -> dict[str, Any]:
    """--destination-path, --storage-map and --switch-map (where files land is checked against
    the destination's storage by the producer, which has the inventory; switches by pre-flight)."""
    o: dict[str, Any] = {}
    if switch_map is not None:
        o["switch_map"] = _switch_map(switch_map)
    if destination_path is not None:
        o["destination_path"] = _folder(destination_path, "--destination-path")
    if storage_map is not None:
        o["storage_map"] = _storage_map(storage_map)
    if destination_path is not None and storage_map:
        raise OptionError("--destination-path puts every file in one folder; drop it or --storage-map")
    return o


def _folder(text: object, what: str) -> str:
    problem = hostpaths.path_problem(text.rstrip("\\") if isinstance(text, str) else text)
    if problem:
        raise OptionError(f"{what} must be a folder such as 'E:\\Hyper-V\\web' ({problem}), not {text!r}")
    assert isinstance(text, str)
    return text.rstrip("\\")


def _switch_map(given: object) -> list[list[str]]:
    """'SRC=DST' items (or [src, dst] pairs) of virtual switch names -> [[src, dst], ...]."""
    if isinstance(given, (str, dict)) or not isinstance(given, (list, tuple)):
        raise OptionError("--switch-map takes SRC=DST (virtual switch names), once per switch")
    out: list[list[str]] = []
    for item in given:
        pair = item.split("=", 1) if isinstance(item, str) else item
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(p, str) and p.strip() == p and p for p in pair)):
            raise OptionError(f"--switch-map takes SRC=DST (External=Uplink), not {item!r}")
        if any(pair[0] == s for s, _ in out):
            raise OptionError(f"--switch-map gives {pair[0]!r} twice")
        out.append([pair[0], pair[1]])
    return out


def _storage_map(given: object) -> list[list[str]]:
    """'SRC_PREFIX=DST_PREFIX' items (or [src, dst] pairs) -> [[src, dst], ...]."""
    if isinstance(given, (str, dict)) or not isinstance(given, (list, tuple)):
        raise OptionError("--storage-map takes SRC_PREFIX=DST_PREFIX, once per prefix")
    out: list[list[str]] = []
    for item in given:
        pair = item.split("=", 1) if isinstance(item, str) else item
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise OptionError(f"--storage-map takes SRC_PREFIX=DST_PREFIX (D:\\VMs=E:\\Hyper-V), not {item!r}")
        src = _folder(pair[0], "--storage-map's SRC_PREFIX")
        dst = _folder(pair[1], "--storage-map's DST_PREFIX")
        if any(hostpaths.same(src, s) for s, _ in out):
            raise OptionError(f"--storage-map gives {src} twice")
        out.append([src, dst])
    return out


def of(rec: dict) -> Options:
    return Options(**(rec.get("options") or {}))
