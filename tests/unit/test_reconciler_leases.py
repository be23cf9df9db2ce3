"""The reconciler keeps the VM lease of a migration that waits, however long it waits."""
import pytest

from workers.coord.admission import Admission
from workers.coord.locks import VMLocks
from workers.engine import context, reconciler
from workers.model import keys
from workers.model.record import Store, new_record

CONFIG = """redis_url = "{url}"
[hosts.hv1]
winrm_endpoint = "https://hv1.example:5986/wsman"
vm_root = 'D:\\VMs'
smb_server = "hv1.example"
smb_share = "VMs"
max_migrations = 1
[hosts.hv2]
winrm_endpoint = "https://hv2.example:5986/wsman"
vm_root = 'D:\\VMs'
smb_server = "hv2.example"
smb_share = "VMs"
max_migrations = 1
"""


@pytest.fixture
def fleet(r, redis_url, tmp_path, monkeypatch):
    path = tmp_path / "quickmig.toml"
    path.write_text(CONFIG.format(url=redis_url))
    monkeypatch.setenv("QUICKMIG_CONFIG", str(path))
    context.reset()
    yield context.config()
    context.reset()


def queued(r, cfg, vm_id: str) -> dict:
    store, locks = Store(r), VMLocks(r)
    rec = new_record(vm=vm_id, vm_id=vm_id, source="hv1", destination="hv2", fence=0)
    rec["fence"] = locks.acquire(vm_id, rec["id"])
    store.create(rec)
    Admission.of(r, cfg).wait(rec["id"], "hv1", "hv2")
    return rec


def test_a_migration_waiting_in_line_keeps_its_vm_lease(r, fleet):
    holder = queued(r, fleet, "vm-a")
    Admission.of(r, fleet).admit()  # takes the hosts' only places
    waiting = queued(r, fleet, "vm-b")
    assert Admission.of(r, fleet).waiting_ids() == [waiting["id"]]
    r.expire(keys.vm_lock("vm-b"), 5)  # as if it had waited all but 5 s of the lease

    cfg = fleet.reconciler
    assert reconciler.reconcile_one(waiting["id"], cfg.deadlines_s, cfg.max_nudges) is None  # in line: left alone
    assert r.ttl(keys.vm_lock("vm-b")) > keys.VM_LOCK_TTL_S - 60
    assert r.get(keys.vm_lock("vm-b")) == waiting["id"]
    assert holder["id"] != waiting["id"]


def test_a_lease_someone_else_holds_now_is_not_extended(r, fleet):
    rec = queued(r, fleet, "vm-c")
    r.set(keys.vm_lock("vm-c"), "another-migration", ex=5)
    cfg = fleet.reconciler
    reconciler.reconcile_one(rec["id"], cfg.deadlines_s, cfg.max_nudges)
    assert r.get(keys.vm_lock("vm-c")) == "another-migration" and r.ttl(keys.vm_lock("vm-c")) <= 5
