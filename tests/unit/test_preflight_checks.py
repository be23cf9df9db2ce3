from workers.model import preflight

MiB = 1024 * 1024
VM = {"name": "web", "checkpoint_type": "Production", "version": "10.0", "switches": ["lan"],
      "memory_startup_bytes": 512 * MiB, "disks": [{"path": "D:\\a.vhdx", "chain": ["D:\\a.vhdx"]}]}
HOST = {"supported_versions": ["9.0", "10.0"], "switches": ["lan"], "cpu_vendor": "GenuineIntel",
        "vm_root_free_bytes": 10 * 1024 * MiB}


def test_a_compatible_destination_with_room_passes():
    assert preflight.problems(VM, HOST, HOST, destination="hv2", file_bytes=1024 * MiB) == []


def test_space_counts_files_memory_and_a_margin():
    need = preflight.needed_bytes(1000 * MiB, 512 * MiB)
    assert need >= 1512 * MiB + preflight.MARGIN_MIN_BYTES
    tight = dict(HOST, vm_root_free_bytes=1512 * MiB)
    found = preflight.problems(VM, HOST, tight, destination="hv2", file_bytes=1000 * MiB)
    assert len(found) == 1 and "1512 MiB free" in found[0]


def test_every_problem_is_reported_at_once():
    vm = dict(VM, checkpoint_type="Disabled", version="5.0", switches=["dmz"],
              disks=VM["disks"] + [{"path": "Disk 2", "chain": [], "passthrough": True}])
    dst = dict(HOST, cpu_vendor="AuthenticAMD", vm_root_free_bytes=0)
    found = preflight.problems(vm, HOST, dst, destination="hv2", file_bytes=0)
    assert len(found) == 6
