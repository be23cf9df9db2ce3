"""Emulated Hyper-V hosts in process (no network), for the emulator's unit tests: a lab
folder with a quickmig.toml naming them, and the hosts, shut down afterwards."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lab.emulator.model import HyperVHost


def config(roots: dict[str, str]) -> str:
    """A quickmig.toml for hosts named like `roots`' keys, each with that VM folder."""
    lines = ['redis_url = "redis://127.0.0.1:1/0"', 'credentials_file = "credentials.toml"']
    for i, (name, root) in enumerate(roots.items(), 1):
        lines += [f"[hosts.{name}]", f'winrm_endpoint = "http://127.0.0.1:{i}/wsman"', f"vm_root = '{root}'",
                  'smb_server = "127.0.0.1"', f'smb_share = "{name}"']
    return "\n".join(lines) + "\n"


def hosts_in(tmp_path: Path, roots: dict[str, str] | None = None,
             **host_options: object) -> Iterator[tuple[Path, Callable[[str], HyperVHost]]]:
    """(lab folder, make(name) -> a host of `roots`, hv1 and hv2 in D:\\VMs\\<name> by default)."""
    roots = roots or {"hv1": "D:\\VMs\\hv1", "hv2": "D:\\VMs\\hv2"}
    (tmp_path / "quickmig.toml").write_text(config(roots))
    made: list[HyperVHost] = []

    def make(name: str) -> HyperVHost:
        h = HyperVHost(tmp_path, name, roots[name], **host_options)  # type: ignore[arg-type]
        made.append(h)
        return h

    try:
        yield tmp_path, make
    finally:
        for h in made:
            h.shutdown()
