"""Worker logging: every line carries the migration id and phase it belongs to.

The id and phase come from, in order: the LoggerAdapter of a step (`mid`,
`phase` extras), the migration whose task this process is running (bound around each
task), or Celery's own task lines (their `data` names the task and its argument, the
migration id). Lines that belong to no migration carry "-".

Format: text by default; one JSON object per line with QUICKMIG_LOG_FORMAT=json or
`[logging] format = "json"` in quickmig.toml (the environment wins).
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager

from workers.model.config import LOG_FORMATS, ConfigError, load_config

FORMAT_ENV = "QUICKMIG_LOG_FORMAT"
NONE = "-"

_current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("quickmig_migration",
                                                                                 default=None)
_MID_IN_ARGS = re.compile(r"""^\[['"]([0-9a-f]{8,64})['"]""")


@contextmanager
def bound(mid: str, phase: str):
    """Every log line emitted inside belongs to migration `mid` in `phase`."""
    token = _current.set((mid, phase))
    try:
        yield
    finally:
        _current.reset(token)


def bind(mid: str, phase: str) -> None:
    """For the task about to run in this process (Celery's task_prerun); see clear()."""
    _current.set((mid, phase))


def clear() -> None:
    _current.set(None)


def _from_celery(record: logging.LogRecord) -> tuple[str, str] | None:
    data = getattr(record, "data", None)
    if not isinstance(data, dict) or not str(data.get("name", "")).startswith("quickmig."):
        return None
    m = _MID_IN_ARGS.match(str(data.get("args", "")))
    return (m.group(1), data["name"].split(".")[-1]) if m else None


class MigrationContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "mid", None) is None:
            found = _current.get() or _from_celery(record) or (NONE, NONE)
            record.mid, record.phase = found
        elif getattr(record, "phase", None) is None:
            record.phase = NONE
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "mid": record.mid,
            "phase": record.phase,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d mid=%(mid)s phase=%(phase)s %(name)s: %(message)s"


def chosen_format(config_format: str | None = None) -> str:
    fmt = (os.environ.get(FORMAT_ENV) or config_format or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)} "
                          f"({FORMAT_ENV} or [logging] format)")
    return fmt


def _config_format() -> str | None:
    try:
        return load_config().logging.format
    except ConfigError:
        return None


def configure(level=logging.INFO, logfile: str | None = None, fmt: str | None = None) -> logging.Handler:
    """Install the one quickmig handler on the root logger (replacing a previous one)."""
    fmt = chosen_format(fmt or _config_format())
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.__stderr__)
    handler.set_name("quickmig")
    handler.addFilter(MigrationContext())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "quickmig":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # smbprotocol logs every SMB request at INFO: megabytes per migration, nothing actionable
    logging.getLogger("smbprotocol").setLevel(max(logging.WARNING, root.level))
    return handler
