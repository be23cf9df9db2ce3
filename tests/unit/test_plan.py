import pytest

from workers.model.config import Config, Host
from workers.model.file_plan import PathMap, downtime_files, frozen_files, layout_problems
from workers.model.hostpaths import HostPathError


def host(name, root):
    return Host(name=name, winrm_endpoint="http://127.0.0.1:1/wsman", winrm_transport="basic",
                vm_root=root, smb_server="127.0.0.1", smb_port=1, smb_share=name)


CFG = Config(path=None, redis_url="redis://x", credentials_file=None,
             hosts={"a": host("a", "D:\\VMs\\a"), "b": host("b", "E:\\Hyper-V")})

VM = {
    "path": "D:\\VMs\\a\\1", "snapshot_location": "D:\\VMs\\a\\1",
    "disks": [{"path": "D:\\VMs\\a\\1\\Virtual Hard Disks\\d_s.avhdx",
               "chain": ["D:\\VMs\\a\\1\\Virtual Hard Disks\\d_s.avhdx", "D:\\VMs\\a\\1\\Virtual Hard Disks\\d.vhdx"]}],
    "isos": ["D:\\VMs\\a\\ISO\\tools.iso"],
    "snapshots": [{"id": "s", "name": "quickmig-x", "config_path": "D:\\VMs\\a\\1\\Snapshots\\s.vmcx",
                   "files": ["D:\\VMs\\a\\1\\Snapshots\\s.vmcx", "D:\\VMs\\a\\1\\Snapshots\\s.vmgs",
                             "D:\\VMs\\a\\1\\Snapshots\\s.vmrs"]},
                  {"id": "old", "name": "theirs", "config_path": "D:\\VMs\\a\\1\\Snapshots\\old.vmcx"}],
    "state_files": ["D:\\VMs\\a\\1\\Virtual Machines\\1.vmcx", "D:\\VMs\\a\\1\\Virtual Machines\\1.vmrs"],
}


def test_frozen_files_are_the_parents_every_file_of_every_checkpoint_and_isos_not_the_leaf():
    """Import-VM -Register needs every checkpoint the VM's configuration lists, each whole."""
    paths = [f["path"] for f in frozen_files(VM)]
    assert paths == ["D:\\VMs\\a\\1\\Virtual Hard Disks\\d.vhdx", "D:\\VMs\\a\\1\\Snapshots\\s.vmcx",
                     "D:\\VMs\\a\\1\\Snapshots\\s.vmgs", "D:\\VMs\\a\\1\\Snapshots\\s.vmrs",
                     "D:\\VMs\\a\\1\\Snapshots\\old.vmcx", "D:\\VMs\\a\\ISO\\tools.iso"]


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


def test_validation_points_drives_at_the_newest_frozen_disk_and_fixes_only_frozen_parents_before_the_downtime():
    pm = PathMap(CFG, "a", "b")
    three = {"path": "D:\\VMs\\a\\1", "disks": [{"path": "D:\\VMs\\a\\1\\d_2.avhdx", "chain": [
        "D:\\VMs\\a\\1\\d_2.avhdx", "D:\\VMs\\a\\1\\d_1.avhdx", "D:\\VMs\\a\\1\\d.vhdx"]}]}
    assert pm.validation_disk_paths(three) == {"D:\\VMs\\a\\1\\d_2.avhdx": "E:\\Hyper-V\\1\\d_1.avhdx"}
    assert pm.frozen_parent_fixes(three) == [{"path": "E:\\Hyper-V\\1\\d_1.avhdx",
                                              "parent_path": "E:\\Hyper-V\\1\\d.vhdx"}]
    assert pm.frozen_parent_fixes(VM) == []
    assert pm.vm_folder(three) == "E:\\Hyper-V\\1"
    assert pm.vm_folder({"path": "D:\\VMs\\a\\"}) == "E:\\Hyper-V"  # a VM kept in the root's own folders


def test_checkpoints_kept_outside_the_vm_folder_are_refused_with_the_fix():
    assert layout_problems(VM) == []
    elsewhere = dict(VM, snapshot_location="D:\\VMs\\a\\snaps")
    [problem] = layout_problems(elsewhere)
    assert "Move-VMStorage -SnapshotFilePath 'D:\\VMs\\a\\1'" in problem
    stray = dict(VM, snapshots=[{"id": "x", "name": "x", "config_path": "D:\\VMs\\a\\x.vmcx"}])
    assert "D:\\VMs\\a\\x.vmcx" in layout_problems(stray)[0]
