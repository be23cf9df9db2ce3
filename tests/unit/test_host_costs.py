"""The emulated host's cost profiles (lab/emulator/costs.py): what a process start, the
Hyper-V module and each cmdlet cost, spent where a real host would spend them and logged."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from lab.emulator import costs
from lab.emulator.wsman import Command, EmulatorServer
from tests.unit import test_emulator_model
from tests.unit.test_emulator_model import new_vm
from workers.hyperv import driver, scripts

lab = test_emulator_model.lab  # the same fixture: emulated hosts in process
MiB = 1024 * 1024
CMDLETS = json.loads((Path(__file__).parents[1] / "data" / "hyperv_cmdlets.json").read_text())["cmdlets"]


def test_only_the_scripts_without_a_hyperv_cmdlet_skip_the_module_load():
    for op in scripts.ops():
        text = scripts.load(op)
        calls = {c for c in CMDLETS if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", text, re.I)}
        assert (not calls) == (op in costs.NO_HYPERV_MODULE), (op, sorted(calls))


def test_the_windows_profile_sizes_save_restore_and_hashing_and_fast_costs_nothing(lab):
    _, make = lab
    h = make("hv1")
    vm = new_vm(h, memory_mb=64, write_rate_kbps=0)
    w = costs.WINDOWS
    assert costs.work_s(costs.FAST, h, "save_vm", {"vm_id": vm["id"]}) == 0.0
    assert costs.work_s(w, h, "save_vm", {"vm_id": vm["id"]}) == pytest.approx(0.5 + 64 * MiB / w.save_bps)
    assert costs.work_s(w, h, "start_vm", {"vm_id": vm["id"]}) == pytest.approx(1.0)  # running: no restore
    h.run("save_vm", {"vm_id": vm["id"]})
    assert costs.work_s(w, h, "start_vm", {"vm_id": vm["id"]}) == pytest.approx(1.0 + 64 * MiB / w.restore_bps)
    disk = vm["disks"][0]["path"]
    size = h.paths.local(disk).stat().st_size
    assert costs.work_s(w, h, "file_hash", {"path": disk}) == pytest.approx(0.05 + size / w.hash_bps)
    assert costs.work_s(w, h, "file_hash", {"path": "D:\\VMs\\hv1\\nothing"}) == pytest.approx(0.05)


def test_each_command_starts_a_process_that_loads_the_module_and_both_are_logged_and_spent(lab):
    _, make = lab
    h = make("hv1")
    new_vm(h, write_rate_kbps=0)
    small = dataclasses.replace(costs.WINDOWS, shell_create_s=0.05, process_start_s=0.1, module_load_s=0.15,
                                op_s={"list_vms": 0.2, "file_hash": 0.0})
    srv = EmulatorServer(h, 0, "qm", "secret", host_name="hv1", profile=small)
    try:
        t0 = time.monotonic()
        shell = srv.new_shell(65001, "qm")
        assert time.monotonic() - t0 >= 0.05
        for op, args, least in (("list_vms", {}, 0.1 + 0.15 + 0.2),
                                ("file_hash", {"path": "D:\\VMs\\hv1\\none", "scheme": "sha256"}, 0.1)):
            cmd = Command(shell, driver.POWERSHELL_COMMAND)
            t0 = time.monotonic()
            srv.start_process(cmd)
            cmd.stdin += scripts.render(op, args).encode("utf-8")
            srv._execute(cmd)
            assert cmd.done.is_set() and time.monotonic() - t0 >= least, op
        logged = [(e["event"], e["op"], e["s"]) for e in costs.read_log(h.state_dir)]
        assert logged == [("process_start", None, 0.1), ("module_load", "list_vms", 0.15),
                          ("process_start", None, 0.1)]
    finally:
        srv.server_close()


def test_a_warm_process_pays_its_start_and_module_before_its_script_and_says_when_it_is_ready(lab):
    _, make = lab
    h = make("hv1")
    small = dataclasses.replace(costs.WINDOWS, process_start_s=0.2, module_load_s=0.3, op_s={})
    srv = EmulatorServer(h, 0, "qm", "secret", host_name="hv1", profile=small)
    try:
        shell = srv.new_shell(65001, "qm")
        cmd = Command(shell, driver._command_line(driver.WARM_HYPERV_BOOTSTRAP))
        t0 = time.monotonic()
        srv.start_process(cmd)
        with cmd.output:
            assert cmd.output.wait_for(lambda: cmd.stdout, 5)
        assert time.monotonic() - t0 >= 0.5 and cmd.stdout == b"quickmig-ready\r\n" and not cmd.done.is_set()
        cmd.stdin += scripts.render("list_vms", {}).encode("utf-8")
        t1 = time.monotonic()
        srv._execute(cmd)
        assert time.monotonic() - t1 < 0.25  # nothing left to start or load
        assert cmd.stdout.startswith(b"quickmig-ready\r\n{") and cmd.exit_code == 0
        assert [e["event"] for e in costs.read_log(h.state_dir)] == ["process_start", "module_load"]
    finally:
        srv.server_close()
