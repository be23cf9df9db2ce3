"""Integration fixtures: real servers on loopback, started once per session, stopped at the end.

`smb_servers`: two real Samba `smbd` (emulated hosts "hv-a" and "hv-b"), each on a free
127.0.0.1 port with its own state folder and share folder under pytest's tmp dir, one
random password for the Unix user running the tests. Yields a tuple of two `SmbShare`
(`src, dst = smb_servers`); every smbd process is gone after the session.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.samba import SambaServer, run_samba
from workers.smb.endpoint import SmbEndpoint

SMB_HOSTS = ("hv-a", "hv-b")
SMB_SHARE = "vms"


@dataclass(frozen=True)
class SmbShare:
    """One running lab smbd: how to reach its share over SMB, and where that share is on disk."""

    name: str
    endpoint: SmbEndpoint
    share_dir: Path
    samba: SambaServer

    def local(self, rel: str) -> Path:
        """The local path of a share-relative (backslash) path."""
        return self.share_dir.joinpath(*rel.split("\\"))


@pytest.fixture(scope="session")
def smb_servers(tmp_path_factory) -> tuple[SmbShare, SmbShare]:
    if shutil.which("smbd") is None or shutil.which("pdbedit") is None:
        pytest.skip("Samba (smbd, pdbedit) is not installed")
    from workers.smb.connections import reset_connections

    root = tmp_path_factory.mktemp("smb")
    username = pwd.getpwuid(os.getuid()).pw_name
    password = secrets.token_urlsafe(18)
    shares: list[SmbShare] = []
    try:
        for name in SMB_HOSTS:
            samba = run_samba(root / name / "state", SMB_SHARE, root / name / "share", username, password)
            # signed only: the tests of the copy engine's signed path; those of encryption
            # (the production default) replace it with encrypt=True
            endpoint = SmbEndpoint(samba.host, samba.port, SMB_SHARE, username, password, encrypt=False)
            shares.append(SmbShare(name, endpoint, samba.share_path, samba))
        yield tuple(shares)
    finally:
        reset_connections()  # log off before the servers go away
        for share in shares:
            share.samba.stop()


@pytest.fixture
def smb_dir() -> str:
    """A fresh share-relative folder name, so tests sharing the session's servers never collide."""
    return f"t-{uuid.uuid4().hex[:12]}"
