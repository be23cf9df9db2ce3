"""Network adapters (docs/hyperv-rules.md, "Network adapters"), in process: a legacy adapter
only on a Generation 1 VM, an access VLAN and a static MAC address checked as the cmdlets
check them, all three kept in the configuration a registered copy is made from, and a static
MAC address that a running VM of the host has refused at Start-VM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.emulator.errors import OpError
from lab.emulator.model import HyperVHost
from lab.emulator.vmcx import hardware_settings
from tests.unit.emulated import hosts_in

MAC = "00155D0A0B0C"


@pytest.fixture
def hv1(tmp_path: Path):
    for _lab, make in hosts_in(tmp_path, heartbeat_delay_s=0.0):
        yield make("hv1")


def new_vm(h: HyperVHost, name: str, **kw) -> dict:
    return h.create_vm(name, memory_mb=1, disk_mb=1, write_rate_kbps=0, **kw)["vm"]


def test_a_legacy_adapter_goes_on_a_generation_1_vm_only_and_vlan_and_mac_are_checked(hv1):
    for kw, words in [({"legacy_adapter": True}, "Generation 1"),
                      ({"generation": 1, "vlan_id": 4095}, "VlanId"), ({"generation": 1, "vlan_id": 0}, "VlanId"),
                      ({"static_mac": "01155D0A0B0C"}, "unicast"), ({"static_mac": "00155D0A0B"}, "unicast"),
                      ({"static_mac": MAC, "switches": []}, "network adapter")]:
        with pytest.raises(OpError) as e:
            new_vm(hv1, "bad", **kw)
        assert words in e.value.message, (kw, e.value.message)
    assert hv1.vms == {}
    vm = new_vm(hv1, "old", generation=1, legacy_adapter=True, vlan_id=42, static_mac="00-15-5d-0a-0b-0c",
                switches=["lab-switch", "lab-switch"])
    assert vm["adapters"] == [{"switch": "lab-switch", "legacy": True, "vlan_id": 42, "static_mac": MAC},
                              {"switch": "lab-switch", "legacy": False, "vlan_id": 0, "static_mac": ""}]
    # they are settings of the configuration: a copy registered from it keeps them
    doc = json.loads(hv1.paths.local(hv1.vms[vm["id"]].config_path).read_text())
    assert hardware_settings(doc)["nics"] == [{"legacy": True, "vlan_id": 42, "static_mac": MAC}]
    assert {"mac": MAC, "vm": "old", "vm_id": vm["id"], "state": "Running"} in hv1.run("host_info", {})["static_macs"]


def test_a_static_mac_address_a_running_vm_has_keeps_another_vm_from_starting(hv1):
    holder = new_vm(hv1, "holder", static_mac=MAC)
    with pytest.raises(OpError) as e:
        new_vm(hv1, "twin", static_mac=MAC)
    assert MAC in e.value.message and "'holder'" in e.value.message
    twin = next(v for v in hv1.vms.values() if v.name == "twin")
    assert twin.state == "Off"
    hv1.run("stop_vm", {"vm_id": holder["id"]})
    assert hv1.run("start_vm", {"vm_id": twin.id})["vm"]["state"] == "Running"
