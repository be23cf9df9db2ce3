"""The Lua scripts the coordination modules run inside Redis, one `lua/<name>.lua` each.

Each script is one atomic step (take a lease and bump its fencing token, admit a
migration on both its hosts, reserve bytes on two bandwidth limits, ...); keeping them in
files of their own lets them be read, linted and diffed as Lua. They are read once, when
the module that uses them is imported.
"""
from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def load(name: str, *, audit: bool = False) -> str:
    """The text of lua/<name>.lua; with `audit`, preceded by lua/audit_prelude.lua, which
    gives the script Redis' clock (`now`) and `audit(log, max, entry)` to append to an
    audit log (workers.coord.audit)."""
    return (_read("audit_prelude") + _read(name)) if audit else _read(name)
