"""Host paths quickmig deletes, overwrites or grants rights on: a plain file path strictly
inside the host's configured roots, or refused (workers.model.hostpaths), in Python before
any script is sent; the script checks again on the host (tests/integration/test_not_ours.py)."""
import pytest

from workers.model import hostpaths, options, preflight
from workers.model.config import Host
from workers.model.hostpaths import HostPathError
from workers.model.options import OptionError
from workers.steps import finish

ROOT = "D:\\VMs\\hv1"
HOST = Host(name="hv1", winrm_endpoint="http://127.0.0.1:1/wsman", winrm_transport="basic", vm_root=ROOT,
            smb_server="127.0.0.1", smb_port=1, smb_share="hv1")


@pytest.mark.parametrize("path", [
    "D:\\VMs\\hv1\\a\\Virtual Hard Disks\\disk0.vhdx",
    "d:\\vms\\HV1\\a\\b.avhdx",                      # Windows compares without case
    "D:\\VMs\\hv1\\.hidden\\x.vmcx",                 # a leading period is fine
    "D:\\VMs\\hv1\\Über\\Ölwechsel ☃.vhdx",
    "D:\\VMs\\hv1\\CONSOLE\\NULL.vhdx",              # only the exact device names are reserved
])
def test_plain_paths_inside_the_root_are_accepted_as_they_are(path):
    assert HOST.confine(path) == path
    storage, rel = HOST.place(path)
    assert (storage.path, storage.share) == (ROOT, "hv1") and ROOT + "\\" + rel == ROOT + path[len(ROOT):]


@pytest.mark.parametrize("path, why", [
    ("D:\\VMs\\hv1\\a\\..\\..\\hv2\\x.vhdx", "'..'"),
    ("D:\\VMs\\hv1\\a/../../hv2/x.vhdx", "reserves"),               # the Windows API reads / as \
    ("D:\\VMs\\hv1\\a\\.\\x.vhdx", "'.'"),
    ("D:\\VMs\\hv1\\a\\\\x.vhdx", "empty"),
    ("D:\\VMs\\hv1\\a\\disk.vhdx:evil", "alternate data stream"),  # a stream of disk.vhdx
    ("D:\\VMs\\hv1\\a::$INDEX_ALLOCATION", "alternate data stream"),  # the folder itself
    ("D:\\VMs\\hv1\\a\\disk.vhdx::$DATA", "alternate data stream"),
    ("D:\\VMs\\hv1\\a\\disk.vhdx.", "ends in a space or a period"),  # Windows drops it: disk.vhdx
    ("D:\\VMs\\hv1\\a\\disk.vhdx ", "ends in a space or a period"),
    ("D:\\VMs\\hv1\\a\\NUL", "device name"),
    ("D:\\VMs\\hv1\\a\\nul.vhdx", "device name"),                 # NUL.txt is NUL
    ("D:\\VMs\\hv1\\a\\COM1 .txt", "device name"),
    ("D:\\VMs\\hv1\\a\\LPT\u00b9.vhdx", "device name"),
    ("D:\\VMs\\hv1\\a\\x\x01.vhdx", "reserves"),
    ("D:\\VMs\\hv1\\a\\x?.vhdx", "reserves"),
    ("\\\\?\\D:\\VMs\\hv1\\a\\x.vhdx", "device-namespace"),       # no parsing at all
    ("\\\\.\\PhysicalDrive0", "device-namespace"),
    ("\\\\server\\share\\x.vhdx", "UNC"),
    ("\\??\\D:\\VMs\\hv1\\x.vhdx", "device-namespace"),
    ("D:VMs\\hv1\\x.vhdx", "fully qualified"),                    # relative to D:'s current folder
    ("\\VMs\\hv1\\x.vhdx", "fully qualified"),
    ("D:\\VMs\\hv2\\x.vhdx", "outside"),
    ("D:\\VMs\\hv10\\x.vhdx", "outside"),
    ("D:\\VMs\\hv1", "outside"),                                  # the root itself
    ("C:\\Windows\\System32\\config\\SAM", "outside"),
    ("", "empty"),
    ("D:\\VMs\\hv1\\" + "x" * 1100, "longer"),
])
def test_anything_else_is_refused_naming_why(path, why):
    with pytest.raises(HostPathError) as e:
        HOST.confine(path)
    assert why in str(e.value)
    with pytest.raises(HostPathError):
        HOST.place(path)


@pytest.mark.parametrize("prefix", ["D:\\VMs\\..\\hv2", "E:\\a\\..\\..\\x", "E:\\x.vhdx:s", "E:\\a/../../x",
                                    "E:\\NUL", "", "\\\\srv\\share", "VMs"])
def test_a_placement_option_cannot_name_a_way_out(prefix):
    with pytest.raises(OptionError):
        options.parse(destination_path=prefix)
    with pytest.raises(OptionError):
        options.parse(storage_map=[f"D:\\VMs={prefix}"])


@pytest.mark.parametrize("root", ["D:\\", "D:", "D:\\VMs\\..", "D:\\VMs\\x:y", "\\\\srv\\share", "VMs"])
def test_a_root_must_be_a_plain_folder_below_a_drive(root):
    assert hostpaths.root_problem(root)
    with pytest.raises(HostPathError):
        hostpaths.confine("D:\\VMs\\x.vhdx", [root])


def test_a_config_with_a_root_that_cannot_confine_anything_is_refused_at_load(tmp_path):
    from workers.model.config import ConfigError, load_config
    (tmp_path / "q.toml").write_text('redis_url = "redis://x"\n[hosts.hv1]\nwinrm_endpoint = "http://x/wsman"\n'
                                     "vm_root = 'D:\\'\nsmb_server = \"x\"\nsmb_share = \"s\"\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "q.toml")
    assert "vm_root" in str(e.value) and "whole drive" in str(e.value)


def test_finish_deletes_only_the_vms_own_files_that_the_migration_copied(monkeypatch):
    """Not an ISO image, not a file the migration never copied, nothing that is not the VM's
    own (a forged `copied` entry). A golden parent in its chain is listed: whether another VM
    uses it is for remove_vm to find out on the host, when it deletes."""
    vm_dir = ROOT + "\\vm"
    old = {"config_path": vm_dir + "\\Virtual Machines\\ID.vmcx",
           "disks": [{"chain": [vm_dir + "\\Virtual Hard Disks\\d_s.avhdx", vm_dir + "\\Virtual Hard Disks\\d.vhdx",
                                ROOT + "\\Golden\\base.vhdx"]}],
           "state_files": [vm_dir + "\\Virtual Machines\\ID.vmcx", vm_dir + "\\Virtual Machines\\ID.vmrs"],
           "snapshots": [{"config_path": vm_dir + "\\Snapshots\\S.vmcx"},
                         {"config_path": vm_dir + "\\Snapshots\\THEIRS.vmcx"}],
           "isos": [ROOT + "\\ISO\\tools.iso"]}
    copied = [vm_dir + "\\Virtual Hard Disks\\d_s.avhdx", vm_dir + "\\Virtual Hard Disks\\d.vhdx",
              ROOT + "\\Golden\\base.vhdx", vm_dir + "\\Virtual Machines\\ID.vmcx",
              vm_dir + "\\Virtual Machines\\id.VMRS", vm_dir + "\\Snapshots\\S.vmcx", ROOT + "\\ISO\\tools.iso",
              ROOT + "\\other-vm\\disk.vhdx"]
    rec = {"source": "hv1", "copied": [{"path": p} for p in copied],
           "plan": {"frozen": [{"path": ROOT + "\\ISO\\tools.iso", "kind": "iso"}]}}

    class Cfg:
        def host(self, name):
            return HOST
    monkeypatch.setattr(finish.context, "config", lambda: Cfg())
    assert finish.source_files(rec, old) == old["disks"][0]["chain"] + old["state_files"] + \
        [vm_dir + "\\Snapshots\\S.vmcx"]


def test_a_same_id_vm_on_the_destination_is_a_preflight_refusal_naming_cause_and_fix():
    vm = {"name": "web01", "id": "6ddc63c1-0135-40ca-b998-a606d91080e9"}
    assert preflight.same_id_problem(vm, "hv2", None) is None
    why = preflight.same_id_problem(vm, "hv2", {"id": vm["id"], "name": "web01", "state": "Off"})
    assert why is not None
    for words in ("hv2 already has a VM with the id of web01", vm["id"], "Hyper-V Replica",
                  "Import-VM -Register keeps the id", "Remove-VMReplication", "choose another destination"):
        assert words in why
