"""The host's registry: the VMs registered on it, the planned VMs Compare-VM made, and what
the host offers them (as VMMS keeps them).

The registry (VMMS database) is `DIR/hosts/<host>/emulator/state.json`, rewritten atomically
on every change. A planned VM (Msvm_PlannedComputerSystem) is kept there too, so it outlives
an emulator restart: nothing in the documentation makes one go away but realizing it
(Import-VM) or destroying it (DestroySystem). What becomes of a VM that was Running when the emulator process stopped is
the VM lifecycle's business (see lifecycle.py): loading only reads the records back.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from lab.emulator import hostprops
from lab.emulator.errors import MissingVM, invalid_arg
from lab.emulator.hostpaths import HostPaths
from lab.emulator.vm import VM
from lab.emulator.vmcx import write_vmcx


class Registry:
    """The table of VMs, the planned VMs and the host properties, with `lock` guarding them, and their file."""

    def __init__(self, name: str, paths: HostPaths, state_file: Path):
        self.name = name
        self.paths = paths
        self.state_file = state_file
        self.lock = threading.RLock()
        self.vms: dict[str, VM] = {}
        # planned VM id -> {id, name, definition (the file it came from), ...} (see vmimport.py)
        self.planned: dict[str, dict] = {}
        self.props: dict = hostprops.defaults(name)

    def load(self) -> None:
        try:
            doc = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        self.props.update({k: v for k, v in (doc.get("host_props") or {}).items() if k in hostprops.HOST_PROPS})
        for d in doc.get("vms", []):
            vm = VM.from_state(d)
            self.vms[vm.id] = vm
        self.planned = {p["id"]: p for p in doc.get("planned", [])}

    def persist(self) -> None:
        with self.lock:
            doc = {"format": 1, "host": self.name, "vm_root": self.paths.vm_root, "host_props": dict(self.props),
                   "saved_at": time.time(), "vms": [vm.to_state() for vm in self.vms.values()],
                   "planned": list(self.planned.values())}
            tmp = self.state_file.with_name(f".state.{threading.get_ident()}.tmp")
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)

    def save(self, vm: VM) -> None:
        """A VM changed: rewrite its configuration file and the registry."""
        with self.lock:
            write_vmcx(self.paths, vm)
            self.persist()

    def get(self, vm_id: object, cmdlet: str = "GetVM") -> VM:
        if not isinstance(vm_id, str) or not vm_id:
            raise invalid_arg("Cannot validate argument on parameter 'vm_id': it must be a VM id (GUID).", cmdlet)
        vm = self.vms.get(vm_id.lower())
        if vm is None:
            raise MissingVM(vm_id)
        return vm
