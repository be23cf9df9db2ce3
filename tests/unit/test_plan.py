import pytest

from workers.model.config import Config, Host
from workers.model.file_plan import PathMap, downtime_files, frozen_files
from workers.model.hostpaths import HostPathError


def host(name, root):
    return Host(name=name, winrm_endpoint="http://127.0.0.1:1/wsman", winrm_transport="basic",
                vm_root=root, smb_server="127.0.0.1", smb_port=1, smb_share=name)


CFG = Config(path=None, redis_url="redis://x", credentials_file=None,
             hosts={"a": host("a", "D:\\VMs\\a"), "b": host("b", "E:\\Hyper-V")})

VM = {
    "disks": [{"path": "D:\\VMs\\a\\1\\Virtual Hard Disks\\d_s.avhdx",
               "chain": ["D:\\VMs\\a\\1\\Virtual Hard Disks\\d_s.avhdx", "D:\\VMs\\a\\1\\Virtual Hard Disks\\d.vhdx"]}],
    "isos": ["D:\\VMs\\a\\ISO\\tools.iso"],
    "snapshots": [{"id": "s", "name": "quickmig-x", "config_path": "D:\\VMs\\a\\1\\Snapshots\\s.vmcx"},
                  {"id": "old", "name": "theirs", "config_path": "D:\\VMs\\a\\1\\Snapshots\\old.vmcx"}],
    "state_files": ["D:\\VMs\\a\\1\\Virtual Machines\\1.vmcx", "D:\\VMs\\a\\1\\Virtual Machines\\1.vmrs"],
}


def test_frozen_files_are_the_parents_our_checkpoint_config_and_isos_not_the_leaf():
    paths = [f["path"] for f in frozen_files(VM, "s")]
    assert paths == ["D:\\VMs\\a\\1\\Virtual Hard Disks\\d.vhdx", "D:\\VMs\\a\\1\\Snapshots\\s.vmcx",
                     "D:\\VMs\\a\\ISO\\tools.iso"]


def test_downtime_files_are_the_leaf_and_state_files():
    assert [f["path"] for f in downtime_files(VM)] == [VM["disks"][0]["chain"][0]] + VM["state_files"]


def test_paths_map_between_vm_roots_and_parent_paths_follow():
    pm = PathMap(CFG, "a", "b")
    assert pm.dest("D:\\VMs\\a\\1\\x.vhdx") == "E:\\Hyper-V\\1\\x.vhdx"
    assert pm.parent_fixes(VM) == [{"path": "E:\\Hyper-V\\1\\Virtual Hard Disks\\d_s.avhdx",
                                    "parent_path": "E:\\Hyper-V\\1\\Virtual Hard Disks\\d.vhdx"}]


@pytest.mark.parametrize("bad", ["C:\\Windows\\x", "D:\\VMs\\a\\..\\b\\x", "D:\\VMs\\a\\", "D:\\VMs\\ab\\x"])
def test_paths_outside_the_vm_root_are_refused(bad):
    with pytest.raises(HostPathError):
        CFG.host("a").to_rel(bad)
