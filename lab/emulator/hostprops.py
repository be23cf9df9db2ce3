"""What a host offers a VM: configuration versions, virtual switches, CPU vendor, free space;
and how it is set up: `fips`, the "System cryptography: Use FIPS compliant algorithms for
encryption, hashing, and signing" policy (a script that makes a SHA256Managed is refused,
see scriptfacts.py).

Pre-flight (Compare-VM) and Import-VM check a VM against these; a test changes them through
the lab control API (POST /lab/host) to make such a check fail.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from lab.emulator.errors import invalid_arg

SUPPORTED_VERSIONS = ["9.0", "10.0"]
SWITCHES = ["lab-switch"]
CPU_VENDOR = "GenuineIntel"
# What a test may change about a host (POST /lab/host) to make a pre-flight check fail.
HOST_PROPS = ("supported_versions", "switches", "cpu_vendor", "free_bytes", "fips")


def defaults() -> dict:
    # free_bytes None: the real free space of the share's file system
    return {"supported_versions": list(SUPPORTED_VERSIONS), "switches": list(SWITCHES),
            "cpu_vendor": CPU_VENDOR, "free_bytes": None, "fips": False}


def check(doc: object) -> dict:
    """Lab control: a change to what this host offers, checked; OpError if it is not one."""
    if not isinstance(doc, dict) or set(doc) - set(HOST_PROPS):
        raise invalid_arg(f"host properties are {', '.join(HOST_PROPS)}", "SetVMHost")
    for k in ("supported_versions", "switches"):
        if k in doc and not (isinstance(doc[k], list) and all(isinstance(x, str) and x for x in doc[k])):
            raise invalid_arg(f"{k} must be a list of names", "SetVMHost")
    if "cpu_vendor" in doc and not (isinstance(doc["cpu_vendor"], str) and doc["cpu_vendor"]):
        raise invalid_arg("cpu_vendor must be a name", "SetVMHost")
    if "fips" in doc and not isinstance(doc["fips"], bool):
        raise invalid_arg("fips must be true or false", "SetVMHost")
    fb = doc.get("free_bytes")
    if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or fb < 0):
        raise invalid_arg("free_bytes must be a byte count, or null for the real free space", "SetVMHost")
    return doc


def free_bytes(props: dict, share: Path) -> int:
    if props["free_bytes"] is not None:
        return int(props["free_bytes"])
    return shutil.disk_usage(share).free
