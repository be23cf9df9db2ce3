"""A Dynamic Memory VM's saved state is its assigned memory, which may be more or less than its
startup memory: the destination's free space and the predicted downtime count the larger."""
from workers.model import preflight
from workers.steps import precopy

MiB = 1024 * 1024
VM = {"name": "web", "checkpoint_type": "Production", "version": "10.0", "switches": ["lan"],
      "memory_startup_bytes": 512 * MiB, "disks": [{"path": "D:\\a.vhdx", "chain": ["D:\\a.vhdx"]}]}
HOST = {"supported_versions": ["10.0"], "switches": ["lan"], "cpu_vendor": "GenuineIntel"}
COSTS = {"save_bps": 100 * MiB, "register_start_s": 1.0}


def dynamic(assigned_mb: int) -> dict:
    return dict(VM, dynamic_memory_enabled=True, memory_assigned_bytes=assigned_mb * MiB,
                memory_maximum_bytes=1048576 * MiB)


def test_the_saved_memory_is_the_larger_of_startup_and_assigned_never_the_maximum():
    assert preflight.saved_memory_bytes(VM) == 512 * MiB                 # static, or off: startup
    assert preflight.saved_memory_bytes(dynamic(3072)) == 3072 * MiB     # grown past its startup
    assert preflight.saved_memory_bytes(dynamic(256)) == 512 * MiB       # shrunk: startup still
    assert preflight.saved_memory_bytes(dict(VM, memory_assigned_bytes=0)) == 512 * MiB


def test_free_space_counts_the_assigned_memory_of_a_dynamic_memory_vm():
    files = 1000 * MiB
    room_for_startup = preflight.needed_bytes(files, 512 * MiB)
    dst = dict(HOST, vm_root_free_bytes=room_for_startup)
    assert preflight.problems(VM, HOST, dst, destination="hv2", file_bytes=files) == []
    found = preflight.problems(dynamic(3072), HOST, dst, destination="hv2", file_bytes=files)
    assert len(found) == 1 and "needs" in found[0] and "saved memory" in found[0]
    need = preflight.needed_bytes(files, 3072 * MiB)
    assert preflight.problems(dynamic(3072), HOST, dict(HOST, vm_root_free_bytes=need), destination="hv2",
                              file_bytes=files) == []


def test_the_predicted_downtime_carries_the_assigned_memory():
    rate = 100 * MiB
    static = precopy.predict_s(preflight.saved_memory_bytes(VM), 0, rate, COSTS)
    grown = precopy.predict_s(preflight.saved_memory_bytes(dynamic(3072)), 0, rate, COSTS)
    # save and copy each move 2.5 GiB more, at 100 MiB/s
    assert abs((grown - static) - 2 * 2560 / 100) < 1e-6
