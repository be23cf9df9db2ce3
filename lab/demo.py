"""`quickmig demo`: a lab, one running VM migrated hv1 -> hv2 while its guest writes."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lab import orchestrator
from lab.verify import verify_vm
from producer import report
from producer.migrations import MigrationRequest, Producer
from workers.model.config import load_config

DEMO_VM = {"memory_mb": 256, "disk_mb": 512, "write_rate_kbps": 256}


def run(keep: bool = False) -> int:

    lab_dir = Path(tempfile.mkdtemp(prefix="quickmig-demo-"))
    print(f"bringing a lab up in {lab_dir} ...")
    t0 = time.monotonic()
    orchestrator.up(lab_dir, hosts=2, vms_per_host=0)
    try:
        cfg = load_config(lab_dir / "quickmig.toml")
        orchestrator.add_vm(cfg, "demo-vm", "hv1", **DEMO_VM)
        print(f"lab up in {time.monotonic() - t0:.1f}s; VM 'demo-vm' ({DEMO_VM['memory_mb']} MiB memory, "
              f"{DEMO_VM['disk_mb']} MiB disk) runs on hv1, its guest writing {DEMO_VM['write_rate_kbps']} KiB/s")
        time.sleep(2)  # let the guest write a while before the migration starts
        p = Producer(cfg)
        rec = p.enqueue(MigrationRequest("demo-vm", "hv1", "hv2"))
        print(f"migration {rec['id']} queued: demo-vm hv1 -> hv2")
        rec = p.wait(rec["id"], timeout_s=600, on_change=lambda r: print(f"  ... {r['state']}"))
        check = verify_vm(lab_dir, "demo-vm")
        print()
        print(report.summary(rec))
        print(f"  running on      {', '.join(check['running_on']) or 'no host'}")
        print(f"  integrity       {check['integrity']} ({check['writes_checked']} guest writes checked)")
        ok = rec["state"] == "completed" and check["integrity"] == "ok" and check["running_on"] == ["hv2"]
        return 0 if ok else 1
    finally:
        if keep:
            print(f"lab left running: quickmig lab down --dir {lab_dir}")
        else:
            orchestrator.down(lab_dir)
