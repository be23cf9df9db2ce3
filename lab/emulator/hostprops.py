"""What a host offers a VM: configuration versions, virtual switches, CPU vendor, free space;
the processor (its name and the feature set it offers a VM), memory for VMs (in how many
NUMA nodes, and whether a VM may span them), the guardians whose keys it holds (Get-HgsGuardian)
and its virtual SANs; and how it is set up: `fips`, the "System cryptography: Use FIPS
compliant algorithms for encryption, hashing, and signing" policy (a script that makes a
SHA256Managed is refused, see scriptfacts.py).

Pre-flight, Compare-VM, Import-VM and Start-VM check a VM against these (hostresources.py);
a test changes them through the lab control API (POST /lab/host) to make such a check fail.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from lab.emulator.errors import invalid_arg

SUPPORTED_VERSIONS = ["9.0", "10.0"]
SWITCHES = ["lab-switch"]
CPU_VENDOR = "GenuineIntel"
CPU_MODEL = "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
# The processor features a host offers a VM (one generation); another generation of the same
# vendor offers another set
CPU_FEATURES = ["sse4_2", "aes", "avx", "avx2", "avx512f"]
MEMORY_BYTES = 64 * 1024 ** 3   # memory the host has for VMs
# The lab's ISO library share (its files under DIR/library/lib01/iso); which hosts reach it is
# each host's `unc_shares` (every host by default; a test takes it away from one)
LIBRARY_SHARE = "\\\\lib01\\ISO"
GUARDIAN = "UntrustedGuardian"  # the local guardian Hyper-V makes for the first VM with a virtual TPM
# What a test may change about a host (POST /lab/host) to make a pre-flight check fail.
HOST_PROPS = ("supported_versions", "switches", "cpu_vendor", "free_bytes", "fips", "cpu_model", "cpu_features",
              "memory_bytes", "numa_nodes", "numa_spanning", "guardians", "sans", "folder_free_bytes",
              "unc_shares")


def thumbprint(*parts: str) -> str:
    """A certificate thumbprint (40 hex digits) for the lab's made-up certificates."""
    return hashlib.sha1(":".join(parts).encode()).hexdigest().upper()


def local_guardian(host: str, name: str = GUARDIAN) -> dict:
    """A host's own guardian: its encryption and signing certificates, private keys with them
    (in its "Shielded VM Local Certificates" store)."""
    return {"name": name, "encryption_thumbprint": thumbprint(host, name, "encryption"),
            "signing_thumbprint": thumbprint(host, name, "signing"), "private_keys": True}


def defaults(host: str = "") -> dict:
    # free_bytes None: the real free space of the share's file system
    return {"supported_versions": list(SUPPORTED_VERSIONS), "switches": list(SWITCHES),
            "cpu_vendor": CPU_VENDOR, "free_bytes": None, "fips": False, "cpu_model": CPU_MODEL,
            "cpu_features": list(CPU_FEATURES), "memory_bytes": MEMORY_BYTES, "numa_nodes": 1,
            "numa_spanning": True, "guardians": [local_guardian(host)], "sans": [],
            # the free space of the volume of a storage folder (host path) other than free_bytes
            "folder_free_bytes": {},
            # the SMB shares (\\\\server\\share) this host reaches: the ISO images a DVD drive may name there
            "unc_shares": [LIBRARY_SHARE]}


def check(doc: object) -> dict:
    """Lab control: a change to what this host offers, checked; OpError if it is not one."""
    if not isinstance(doc, dict) or set(doc) - set(HOST_PROPS):
        raise invalid_arg(f"host properties are {', '.join(HOST_PROPS)}", "SetVMHost")
    for k in ("supported_versions", "switches", "cpu_features", "sans"):
        if k in doc and not (isinstance(doc[k], list) and all(isinstance(x, str) and x for x in doc[k])):
            raise invalid_arg(f"{k} must be a list of names", "SetVMHost")
    us = doc.get("unc_shares")
    if us is not None and not (isinstance(us, list) and all(
            isinstance(x, str) and x.startswith("\\\\") and len(x[2:].split("\\")) == 2 and all(x[2:].split("\\"))
            for x in us)):
        raise invalid_arg("unc_shares must be a list of \\\\server\\share names", "SetVMHost")
    for k in ("cpu_vendor", "cpu_model"):
        if k in doc and not (isinstance(doc[k], str) and doc[k]):
            raise invalid_arg(f"{k} must be a name", "SetVMHost")
    for k in ("fips", "numa_spanning"):
        if k in doc and not isinstance(doc[k], bool):
            raise invalid_arg(f"{k} must be true or false", "SetVMHost")
    for k, low in (("memory_bytes", 0), ("numa_nodes", 1)):
        if k in doc and (isinstance(doc[k], bool) or not isinstance(doc[k], int) or not low <= doc[k] <= 1 << 50):
            raise invalid_arg(f"{k} must be a whole number from {low}", "SetVMHost")
    if "guardians" in doc and not (isinstance(doc["guardians"], list) and all(_guardian(g) for g in doc["guardians"])):
        raise invalid_arg("guardians must be a list of {name, encryption_thumbprint, signing_thumbprint, "
                          "private_keys}", "SetVMHost")
    ff = doc.get("folder_free_bytes")
    if ff is not None and not (isinstance(ff, dict) and all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in ff.items())):
        raise invalid_arg("folder_free_bytes must map host folders to byte counts", "SetVMHost")
    fb = doc.get("free_bytes")
    if fb is not None and (isinstance(fb, bool) or not isinstance(fb, int) or fb < 0):
        raise invalid_arg("free_bytes must be a byte count, or null for the real free space", "SetVMHost")
    return doc


def folder_free_bytes(props: dict, share: Path, folder: str) -> int:
    """The free space of the volume that holds `folder` (a storage folder, or a path in one):
    what folder_free_bytes says of the storage folder it is in, else free_bytes."""
    f = folder.rstrip("\\").lower()
    for root, n in sorted((props.get("folder_free_bytes") or {}).items(), key=lambda kv: -len(kv[0])):
        r = root.rstrip("\\").lower()
        if f == r or f.startswith(r + "\\"):
            return int(n)
    return free_bytes(props, share)


def free_bytes(props: dict, share: Path) -> int:
    if props["free_bytes"] is not None:
        return int(props["free_bytes"])
    return shutil.disk_usage(share).free


def _guardian(g: object) -> bool:
    return (isinstance(g, dict) and set(g) == {"name", "encryption_thumbprint", "signing_thumbprint", "private_keys"}
            and all(isinstance(g[k], str) and g[k] for k in ("name", "encryption_thumbprint", "signing_thumbprint"))
            and isinstance(g["private_keys"], bool))
