"""Which virtual switch of the destination each network adapter of a migrating VM connects to.

Decided, first rule that applies (docs/design.md section 5): the request's `--switch-map
SRC=DST` (options `switch_map`, repeatable), the host pair's `[switch_maps.SRC.DST]` in the
config, and otherwise the switch of the same name. Pre-flight refuses a VM with a switch
that lands on none the destination has, naming the option that fixes it; the import connects
each adapter of the planned VM to its switch there (Connect-VMNetworkAdapter through the
compatibility report, as Compare-VM's example 2 disconnects one).
"""
from __future__ import annotations

from workers.model.config import Config
from workers.model.options import Options


def switch_map(cfg: Config, source: str, destination: str, opts: Options, switches: list[str]) -> dict[str, str]:
    """Each of the VM's switch names -> the destination switch it connects to."""
    asked = {src: dst for src, dst in opts.switch_map}
    defaults = dict(cfg.switch_maps.get((source, destination), []))
    return {s: asked.get(s, defaults.get(s, s)) for s in switches}


def changes(mapping: dict[str, str]) -> dict[str, str]:
    """Only the adapters whose switch changes (what the import has to reconnect)."""
    return {s: d for s, d in mapping.items() if s != d}


def problems(mapping: dict[str, str], dst_switches: list[str], *, source: str, destination: str) -> list[str]:
    missing = {s: d for s, d in mapping.items() if d not in dst_switches}
    if not missing:
        return []
    what = ", ".join(f"{s!r}" + (f" (mapped to {d!r})" if s != d else "") for s, d in missing.items())
    has = ", ".join(map(repr, dst_switches)) or "none"
    return [f"{destination} has no virtual switch named {what} (it has {has}); "
            f"give --switch-map {next(iter(missing))}=<a switch of {destination}> or a [switch_maps.{source}."
            f"{destination}] entry, or create the switch there (New-VMSwitch)"]
