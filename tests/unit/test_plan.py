import pytest

from workers.model.config import Config, Host
from workers.model.file_plan import (
    SHARED_KINDS,
    PathMap,
    downtime_files,
    frozen_files,
    iso_check,
    layout_problems,
    shared_parents,
    stored_isos,
)
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
        CFG.host("a").place(bad)


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


# -- several storage folders per host, and where each file lands --------------------------

def two_folder_host(name, vms, data, share_data=None):
    from workers.model.config import Storage
    return Host(name=name, winrm_endpoint="http://127.0.0.1:1/wsman", winrm_transport="basic", vm_root=vms,
                smb_server="127.0.0.1", smb_port=1, smb_share=name,
                storage=(Storage(vms, name, "vms"), Storage(data, share_data or f"{name}-data", "data")))


FLEET = Config(path=None, redis_url="redis://x", credentials_file=None,
               hosts={"a": two_folder_host("a", "D:\\VMs", "E:\\Data"),
                      "b": two_folder_host("b", "F:\\Hyper-V", "G:\\Store"),
                      "old": host("old", "D:\\VMs\\old")},
               storage_maps={("a", "b"): [("E:\\Data\\logs", "F:\\Hyper-V\\logs")]})
WEB = {"path": "D:\\VMs\\web", "config_path": "D:\\VMs\\web\\Virtual Machines\\W.vmcx",
       "disks": [{"path": "D:\\VMs\\web\\Virtual Hard Disks\\os.vhdx",
                  "chain": ["D:\\VMs\\web\\Virtual Hard Disks\\os.vhdx"]},
                 {"path": "E:\\Data\\web\\db.vhdx", "chain": ["E:\\Data\\web\\db.vhdx"]},
                 {"path": "E:\\Data\\logs\\web.vhdx", "chain": ["E:\\Data\\logs\\web.vhdx"]}],
       "state_files": ["D:\\VMs\\web\\Virtual Machines\\W.vmcx"], "isos": [], "snapshots": []}


def placed(pm, vm=WEB):
    return {f["path"]: f["dest"] for f in pm.plan(vm)}


def test_a_file_keeps_its_place_under_the_destinations_folder_of_the_same_name_unless_a_map_says_otherwise():
    from workers.model.options import Options
    pm = PathMap(FLEET, "a", "b", vm_folder=WEB["path"])
    assert placed(pm) == {
        "D:\\VMs\\web\\Virtual Hard Disks\\os.vhdx": "F:\\Hyper-V\\web\\Virtual Hard Disks\\os.vhdx",
        "E:\\Data\\web\\db.vhdx": "G:\\Store\\web\\db.vhdx",                 # the folder named data
        "E:\\Data\\logs\\web.vhdx": "F:\\Hyper-V\\logs\\web.vhdx",           # the pair's default map
        "D:\\VMs\\web\\Virtual Machines\\W.vmcx": "F:\\Hyper-V\\web\\Virtual Machines\\W.vmcx"}
    assert pm.vm_folder(WEB) == "F:\\Hyper-V\\web"
    # --storage-map comes before the pair's default, the longest prefix first
    asked = PathMap(FLEET, "a", "b", Options(storage_map=[["E:\\Data", "F:\\Hyper-V\\data"],
                                                          ["E:\\Data\\logs", "G:\\Store\\l"]]), WEB["path"])
    assert placed(asked)["E:\\Data\\web\\db.vhdx"] == "F:\\Hyper-V\\data\\web\\db.vhdx"
    assert placed(asked)["E:\\Data\\logs\\web.vhdx"] == "G:\\Store\\l\\web.vhdx"
    # --destination-path before everything: the VM's folder keeps its shape, other disks beside it
    one = PathMap(FLEET, "a", "b", Options(destination_path="G:\\Store\\web2"), WEB["path"])
    assert placed(one) == {
        "D:\\VMs\\web\\Virtual Hard Disks\\os.vhdx": "G:\\Store\\web2\\Virtual Hard Disks\\os.vhdx",
        "E:\\Data\\web\\db.vhdx": "G:\\Store\\web2\\Virtual Hard Disks\\db.vhdx",
        "E:\\Data\\logs\\web.vhdx": "G:\\Store\\web2\\Virtual Hard Disks\\web.vhdx",
        "D:\\VMs\\web\\Virtual Machines\\W.vmcx": "G:\\Store\\web2\\Virtual Machines\\W.vmcx"}
    assert one.vm_folder(WEB) == "G:\\Store\\web2" and one.problems(WEB) == []


def test_a_file_with_no_reachable_destination_is_refused_naming_the_option_that_fixes_it():
    from workers.model.file_plan import PlacementError
    from workers.model.options import Options
    to_old = PathMap(FLEET, "a", "old", vm_folder=WEB["path"])
    with pytest.raises(PlacementError) as e:
        to_old.plan(WEB)
    assert "E:\\Data" in str(e.value) and "--storage-map" in str(e.value) and "--destination-path" in str(e.value)
    outside = PathMap(FLEET, "a", "b", Options(storage_map=[["E:\\Data", "Z:\\Nowhere"]]), WEB["path"])
    with pytest.raises(PlacementError) as e:
        outside.plan(WEB)
    assert "Z:\\Nowhere" in str(e.value) and "fix --storage-map" in str(e.value)
    nowhere = PathMap(FLEET, "a", "b", Options(destination_path="C:\\Temp"), WEB["path"])
    assert "fix --destination-path" in nowhere.problems(WEB)[0]
    # two files that would land on one path: refused, never one copied over the other
    clash = dict(WEB, disks=[{"path": p, "chain": [p]} for p in ("D:\\VMs\\x\\d.vhdx", "E:\\Data\\y\\d.vhdx")])
    with pytest.raises(PlacementError, match="both land"):
        PathMap(FLEET, "a", "b", Options(destination_path="G:\\Store\\w"), WEB["path"]).plan(clash)


def test_a_map_that_splits_the_vm_folder_from_its_checkpoints_is_refused():
    from workers.model.options import Options
    vm = dict(WEB, snapshots=[{"id": "s", "name": "s", "config_path": "D:\\VMs\\web\\Snapshots\\S.vmcx"}])
    split = PathMap(FLEET, "a", "b", Options(storage_map=[["D:\\VMs\\web\\Snapshots", "G:\\Store\\snaps"]]),
                    WEB["path"])
    [problem] = split.problems(vm)
    assert "G:\\Store\\snaps\\S.vmcx" in problem and "F:\\Hyper-V\\web\\Snapshots" in problem


def test_storage_folders_are_a_list_per_host_and_the_single_folder_form_still_works(tmp_path):
    from workers.model.config import ConfigError, load_config
    head = 'redis_url = "redis://127.0.0.1/0"\n[hosts.a]\nwinrm_endpoint = "http://a/wsman"\nsmb_server = "a"\n'
    path = tmp_path / "q.toml"
    path.write_text(head + "storage = [{ path = 'D:\\VMs', share = \"VMs\" }, "
                    "{ path = 'E:\\Data', share = \"Data\", name = \"data\" }]\n"
                    '[hosts.b]\nwinrm_endpoint = "http://b/wsman"\nsmb_server = "b"\n'
                    "vm_root = 'F:\\Hyper-V'\nsmb_share = \"VMs\"\n"
                    "[storage_maps.a.b]\n'E:\\Data' = 'F:\\Hyper-V\\data'\n")
    cfg = load_config(path)
    assert [(s.path, s.share, s.name) for s in cfg.host("a").storage] == [("D:\\VMs", "VMs", "VMs"),
                                                                          ("E:\\Data", "Data", "data")]
    assert cfg.host("a").roots == ["D:\\VMs", "E:\\Data"] and cfg.host("a").vm_root == "D:\\VMs"
    assert [(s.path, s.name) for s in cfg.host("b").storage] == [("F:\\Hyper-V", "vms")]
    assert cfg.storage_maps == {("a", "b"): [("E:\\Data", "F:\\Hyper-V\\data")]}
    for bad, says in [("storage = [{ path = 'D:\\VMs', share = \"VMs\" }]\nvm_root = 'D:\\VMs'\n", "not both"),
                      ("storage = []\n", "must be a list"),
                      ("storage = [{ path = 'D:\\', share = \"VMs\" }]\n", "whole drive"),
                      ("storage = [{ path = 'D:\\VMs', share = \"VMs\" }, { path = 'E:\\x', share = \"vms\" }]\n",
                       "share 'vms' is given twice"),
                      ("storage = [{ path = 'D:\\VMs', share = \"VMs\", size = 1 }]\n", "unknown key 'size'"),
                      ("storage = [{ path = 'D:\\VMs', share = \"VMs\" }]\n[storage_maps.a.zz]\n'D:\\x' = 'D:\\VMs'\n",
                       "unknown destination host 'zz'"),
                      ("storage = [{ path = 'D:\\VMs', share = \"VMs\" }]\n[storage_maps.a.a]\n'D:\\x' = 'C:\\x'\n",
                       "in no storage folder of a")]:
        path.write_text(head + bad)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert says in str(e.value) and "\n" not in str(e.value)


def test_each_switch_lands_on_the_asked_switch_then_the_pairs_default_then_the_same_name():
    from workers.model import network_map, options
    from workers.model.options import OptionError, Options
    cfg = Config(path=None, redis_url="redis://x", credentials_file=None, hosts=FLEET.hosts,
                 switch_maps={("a", "b"): [("Back", "Storage"), ("Front", "Edge")]})
    asked = Options(**options.parse(switch_map=["Front=Uplink"]))
    mapping = network_map.switch_map(cfg, "a", "b", asked, ["Front", "Back", "lab"])
    assert mapping == {"Front": "Uplink", "Back": "Storage", "lab": "lab"}
    assert network_map.changes(mapping) == {"Front": "Uplink", "Back": "Storage"}
    assert network_map.problems(mapping, ["Uplink", "Storage", "lab"], source="a", destination="b") == []
    [problem] = network_map.problems(mapping, ["lab"], source="a", destination="b")
    assert "'Front' (mapped to 'Uplink')" in problem and "--switch-map Front=" in problem
    for bad in (["Front"], ["=Edge"], ["Front= Edge"], ["A=B", "A=C"], "Front=Edge"):
        with pytest.raises(OptionError):
            options.parse(switch_map=bad)


def test_a_parent_below_a_differencing_disk_no_checkpoint_made_is_a_golden_parent_shared_as_isos_are():
    vm = {"disks": [
        {"chain": ["D:\\vm\\disk0_S2.avhdx", "D:\\vm\\disk0_S1.avhdx", "D:\\vm\\disk0.vhdx", "D:\\Golden\\base.vhdx",
                   "D:\\Golden\\os.vhdx"]},
        {"chain": ["E:\\d\\disk1_S1.avhdx", "E:\\d\\disk1.vhdx"]}]}
    assert shared_parents(vm) == {"d:\\golden\\base.vhdx", "d:\\golden\\os.vhdx"}
    kinds = {f["path"]: f["kind"] for f in frozen_files(vm)}
    assert kinds == {"D:\\vm\\disk0_S1.avhdx": "disk", "D:\\vm\\disk0.vhdx": "disk", "D:\\Golden\\base.vhdx": "parent",
                     "D:\\Golden\\os.vhdx": "parent", "E:\\d\\disk1.vhdx": "disk"}
    assert set(SHARED_KINDS) == {"iso", "parent"}


def test_only_isos_in_a_storage_folder_are_copied_a_library_one_stays_and_others_are_refused_or_ejected():
    unc, stray, bad = "\\\\lib01\\ISO\\w.iso", "C:\\Users\\x\\a.iso", "\\\\lib01\\ISO\\..\\w.iso"
    vm = {**VM, "name": "v", "isos": [VM["isos"][0], unc, stray],
          "dvd_drives": [{"controller_type": "SCSI", "controller_number": 0, "controller_location": 2, "path": stray}]}
    src = CFG.host("a")
    assert stored_isos(src, vm) == [VM["isos"][0]]
    assert [f["path"] for f in frozen_files(vm, src) if f["kind"] == "iso"] == [VM["isos"][0]]
    assert [f["path"] for f in PathMap(CFG, "a", "b").plan(vm) if f["kind"] == "iso"] == [VM["isos"][0]]
    ok = iso_check(src, vm, source="a", destination="b", reachable={unc: True}, eject=False)
    assert ok.library == [unc] and ok.ejects == []
    assert len(ok.problems) == 1 and stray in ok.problems[0] and "--eject-unmovable-isos" in ok.problems[0]
    far = iso_check(src, vm, source="a", destination="b", reachable={unc: False}, eject=False)
    assert len(far.problems) == 2 and "b cannot reach" in far.problems[0] and "\\\\lib01\\ISO" in far.problems[0]
    ejected = iso_check(src, vm, source="a", destination="b", reachable={unc: False}, eject=True)
    assert ejected.problems == [] and ejected.ejects == [{"path": unc, "drive": ""},
                                                         {"path": stray, "drive": "SCSI 0:2"}]
    # a UNC path is checked as one: never asked about, never ejected, refused even with the option
    odd = iso_check(src, {**vm, "isos": [bad]}, source="a", destination="b", reachable={bad: True}, eject=True)
    assert odd.ejects == [] and odd.library == [] and "'..'" in odd.problems[0]
