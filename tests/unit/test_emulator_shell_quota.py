"""The emulated host's WinRS shell quota (docs/hyperv-rules.md, "the WinRM shell"): at most
MaxShellsPerUser (30 by default) shells of one user at once; the next Create is refused
with wsman:QuotaLimit until one is deleted."""
from __future__ import annotations

import threading

import pytest
from winrm.exceptions import WSManFaultError
from winrm.protocol import Protocol

from lab.emulator.wsman import MAX_SHELLS_PER_USER, EmulatorServer


@pytest.fixture
def server():
    srv = EmulatorServer(None, 0, "qm", "secret", host_name="hv1")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_user_gets_max_shells_per_user_shells_and_the_next_one_after_one_is_deleted(server):
    assert MAX_SHELLS_PER_USER == 30  # winrm/config/winrs MaxShellsPerUser's default
    p = Protocol(server.endpoint, transport="basic", username="qm", password="secret",
                 server_cert_validation="ignore")
    shells = [p.open_shell(codepage=65001) for _ in range(MAX_SHELLS_PER_USER)]
    with pytest.raises(WSManFaultError) as ei:
        p.open_shell(codepage=65001)
    assert ei.value.fault_subcode == "w:QuotaLimit" and ei.value.wsman_fault_code == 2150859174
    assert "maximum number of concurrent shells" in ei.value.reason
    p.close_shell(shells.pop())
    shells.append(p.open_shell(codepage=65001))
    for sid in shells:
        p.close_shell(sid)
    assert server.shells == {}
