"""The SMB client's security floor against real smbd configured below it: a server that
cannot meet it is refused before any credential is sent, with one error naming the
server and what it lacks."""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import uuid

import pytest

from lab import samba
from lab.ports import free_port
from workers.smb import connections
from workers.smb.endpoint import SmbEndpoint
from workers.smb.errors import SmbPolicyError
from workers.smb.file_copy import exists

pytestmark = pytest.mark.integration


@pytest.fixture
def weak_smbd(tmp_path):
    """start(settings): an smbd whose [global] lines are replaced by `settings`."""
    if shutil.which("smbd") is None or shutil.which("pdbedit") is None:
        pytest.skip("Samba (smbd, pdbedit) is not installed")
    user = pwd.getpwuid(os.getuid()).pw_name
    password = secrets.token_urlsafe(18)
    procs = []

    def start(settings: dict[str, str]) -> SmbEndpoint:
        state = tmp_path / uuid.uuid4().hex[:8]
        port = free_port()
        conf = samba.write_config(state, "vms", state / "share", port, user)
        text = conf.read_text()
        for key, value in settings.items():
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(key + " ="))
            text = text.replace(line, f"   {key} = {value}")
        conf.write_text(text)
        samba.set_password(conf, user, password)
        proc = samba.start(conf)
        procs.append(proc)
        samba.wait_ready(port, 15, proc=proc)
        return SmbEndpoint("127.0.0.1", port, "vms", user, password)

    yield start
    connections.reset_connections()
    for p in procs:
        samba.stop(p)


def test_a_server_that_speaks_only_smb2_is_refused_naming_it(weak_smbd):
    ep = weak_smbd({"server min protocol": "SMB2_02", "server max protocol": "SMB2_10"})
    for encrypt in (False, True):
        with pytest.raises(SmbPolicyError, match=r"SMB 2\.1.*requires SMB 3\.0 or later") as e:
            exists(SmbEndpoint(**{**ep.__dict__, "encrypt": encrypt}), "x.vhdx")
        assert ep.unc_root in str(e.value)


def test_a_server_without_encryption_is_refused_when_encryption_is_on_and_used_when_off(weak_smbd):
    ep = weak_smbd({"server smb encrypt": "off"})
    with pytest.raises(SmbPolicyError, match="does not offer SMB encryption.*smb_encrypt = false") as e:
        exists(ep, "x.vhdx")
    assert ep.unc_root in str(e.value)
    signed_only = SmbEndpoint(**{**ep.__dict__, "encrypt": False})
    assert exists(signed_only, "x.vhdx") is False
    session = connections.tree(signed_only).session
    assert session.signing_required and not session.encrypt_data
