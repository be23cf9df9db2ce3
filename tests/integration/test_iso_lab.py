"""ISO images quickmig does not copy (issue #13 item 7): an image on the lab's library share
(`\\\\lib01\\ISO`, reached by the hosts named in their `unc_shares`) stays attached as it is
where the destination reaches it; one on a share the destination cannot reach, or a local
image outside every storage folder of the source, is refused before anything changes,
unless --eject-unmovable-isos empties that DVD drive on the destination's copy.

One lab of two hosts for the module; a test that takes the library away from hv2 gives it back."""
from __future__ import annotations

import hashlib

import pytest

from lab import orchestrator

pytestmark = pytest.mark.integration

LIBRARY_ISO = "\\\\lib01\\ISO\\win2022.iso"
LOCAL_ISO = "C:\\Users\\x\\Downloads\\a.iso"


@pytest.fixture(scope="module")
def lab(own_lab):
    with own_lab("isos", hosts=2) as lab:
        yield lab


def vm_on(lab, host: str, name: str) -> dict | None:
    return next((v for v in lab.emulator(host).state()["vms"] if v["name"] == name), None)


def library_files(lab) -> dict[str, str]:
    """Every file of the lab's library share, with its digest: what quickmig must never change."""
    top = lab.dir / "library"
    return {str(f.relative_to(top)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(top.rglob("*")) if f.is_file()}


def hosts_state(lab) -> dict:
    """Each host's VMs as the emulator sees them (state, disks, ISO images, checkpoints)."""
    return {h: sorted(((v["name"], v["state"], str(v.get("disks")), str(v.get("isos")), str(v.get("snapshots")))
                       for v in lab.emulator(h).state()["vms"]), key=str) for h in ("hv1", "hv2")}


def refused_before_anything(lab, name: str, says: list[str], *extra: str) -> None:
    before, hosts, library = lab.redis_state(), hosts_state(lab), library_files(lab)
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", *extra)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    for word in says:
        assert word in line, (word, line)
    assert lab.redis_state() == before
    assert hosts_state(lab) == hosts
    assert library_files(lab) == library
    vm = vm_on(lab, "hv1", name)
    assert vm["state"] == "Running" and vm["snapshots"] == [] and vm_on(lab, "hv2", name) is None


def test_a_library_iso_the_destination_reaches_stays_attached_as_it_is_and_is_never_copied(lab):
    name = "library"
    lab.add_vm(name, "hv1", iso=LIBRARY_ISO)
    library = library_files(lab)
    assert list(library) == ["lib01/iso/win2022.iso"]
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert f"ISO {LIBRARY_ISO} stays attached as it is" in res.stdout
    assert LIBRARY_ISO not in "".join(line for line in res.stdout.splitlines() if " -> " in line)
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert vm["isos"] == [LIBRARY_ISO] and vm["state"] == "Running"
    assert vm_on(lab, "hv1", name) is None
    assert "iso" not in rec["copied_by_kind"], rec["copied_by_kind"]  # no image was copied
    assert not rec.get("ejected_isos")
    assert library_files(lab) == library  # the share's image is neither copied, changed nor removed
    out = lab.verify(name)
    assert out["integrity"] == "ok", out


def test_a_library_iso_the_destination_cannot_reach_is_refused_and_nothing_changes(lab):
    name = "unreached"
    lab.add_vm(name, "hv1", iso=LIBRARY_ISO)
    res = lab.cli("lab", "set-host", "hv2", "--no-unc-shares")
    assert res.returncode == 0, res.stderr
    try:
        refused_before_anything(lab, name, [LIBRARY_ISO, "hv2", "--eject-unmovable-isos", "\\\\lib01\\ISO"])
    finally:
        res = lab.cli("lab", "set-host", "hv2", "--unc-share", "\\\\lib01\\ISO")
        assert res.returncode == 0, res.stderr


def test_a_local_iso_outside_every_storage_folder_is_refused_and_nothing_changes(lab):
    name = "stray"
    lab.add_vm(name, "hv1", iso=LOCAL_ISO)
    refused_before_anything(lab, name, [LOCAL_ISO, "hv1", "storage folder", "--eject-unmovable-isos"])


def test_with_eject_unmovable_isos_the_drive_is_emptied_on_the_destination_and_the_record_says_so(lab):
    name = "ejected"
    lab.add_vm(name, "hv1", iso=LOCAL_ISO)
    res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2", "--dry-run", "--eject-unmovable-isos")
    assert res.returncode == 0, res.stderr
    assert f"ISO {LOCAL_ISO} ejected on hv2's copy" in res.stdout and "pre-flight: ok" in res.stdout
    res, rec = lab.cli_json("migrate", name, "--from", "hv1", "--to", "hv2", "--eject-unmovable-isos",
                            "--wait", "--json", "--timeout", "240")
    assert rec["state"] == "completed", rec.get("error")
    vm = vm_on(lab, "hv2", name)
    assert vm["isos"] == [] and vm["state"] == "Running"
    assert rec["ejected_isos"] == [{"path": LOCAL_ISO, "drive": "SCSI 0:1"}]
    assert rec["options"]["eject_unmovable_isos"] is True
    assert "iso" not in rec["copied_by_kind"], rec["copied_by_kind"]  # no image was copied
    res = lab.cli("status", rec["id"])
    assert res.returncode == 0, res.stderr
    assert f"ejected ISO     {LOCAL_ISO} (DVD drive SCSI 0:1, on hv2)" in res.stdout
    # the image stays on hv1 where it was, untouched (the source VM is gone: the move completed)
    assert (lab.dir / "hosts" / "hv1" / "elsewhere" / "C" / "Users" / "x" / "Downloads" / "a.iso").is_file()
    out = lab.verify(name)
    assert out["integrity"] == "ok", out


def host_info_calls(lab, host: str) -> int:
    """host_info calls the emulated host has answered so far (its log: one line per op)."""
    log = lab.dir / "logs" / f"emulator-{host}.log"
    return sum(" op host_info " in line for line in log.read_text(errors="replace").splitlines())


def test_a_library_iso_costs_the_clis_submit_no_second_look_up_on_the_destination(lab):
    """The CLI's pre-flight at submit asks the destination which library images it reaches in
    the host_info call it makes anyway: a VM with a library image costs no more host_info
    calls on the destination than the same VM without one (each a powershell.exe on a real
    host). Both VMs are on a switch hv2 lacks, so the submit ends refused (exit 2) after the
    pre-flight, before any worker asks the hosts anything."""
    orchestrator.set_host(lab.cfg, "hv1", {"switches": ["lab-switch", "Front"]})
    try:
        calls = {}
        for name, extra in (("cost-library", {"iso": LIBRARY_ISO}), ("cost-plain", {})):
            lab.add_vm(name, "hv1", switches=["Front"], **extra)
            before = host_info_calls(lab, "hv2")
            res = lab.cli("migrate", name, "--from", "hv1", "--to", "hv2")
            assert res.returncode == 2 and "pre-flight refused: " in res.stderr, (res.stdout, res.stderr)
            assert "Front" in res.stderr, res.stderr
            calls[name] = host_info_calls(lab, "hv2") - before
        assert calls["cost-plain"] >= 1 and calls["cost-library"] == calls["cost-plain"], calls
    finally:
        orchestrator.set_host(lab.cfg, "hv1", {"switches": ["lab-switch"]})
