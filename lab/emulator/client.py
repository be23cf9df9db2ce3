"""Python client for an emulated host's lab control API (JSON over HTTP, Basic auth)."""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit


class EmulatorClientError(Exception):
    """The emulator answered with an error (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class EmulatorClient:
    def __init__(self, endpoint: str, username: str, password: str, timeout_s: float = 30.0):
        """`endpoint` is the host's winrm_endpoint (http://127.0.0.1:<port>/wsman) or its base URL."""
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"not an http endpoint: {endpoint!r}")
        self.base = f"{u.scheme}://{u.netloc}"
        self.timeout_s = timeout_s
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy

    @classmethod
    def for_host(cls, config, host: str, timeout_s: float = 30.0) -> EmulatorClient:
        """From a workers.model.config.Config and a host name."""
        creds = config.credentials(host)
        return cls(config.host(host).winrm_endpoint, creds.winrm_username, creds.winrm_password, timeout_s)

    def _call(self, method: str, path: str, doc: object = None, timeout_s: float | None = None) -> object:
        data = None if doc is None else json.dumps(doc).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                msg = json.loads(raw).get("error", raw.decode("utf-8", "replace"))
            except (ValueError, AttributeError):
                msg = raw.decode("utf-8", "replace") or e.reason
            raise EmulatorClientError(e.code, str(msg)) from None
        except (urllib.error.URLError, OSError) as e:
            raise EmulatorClientError(0, f"cannot reach {self.base}: {getattr(e, 'reason', e)}") from None

    # -- the API ---------------------------------------------------------------------
    def ping(self) -> dict:
        return self._call("GET", "/lab/ping", timeout_s=min(self.timeout_s, 5.0))  # type: ignore[return-value]

    def wait_ready(self, timeout: float = 15.0) -> dict:
        """Poll /lab/ping until it answers; raises TimeoutError after `timeout` seconds.

        A 401 means something else (or a host with other credentials) holds the port."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                return self.ping()
            except EmulatorClientError as e:
                if e.status == 401:
                    raise
                last = e.message
            if time.monotonic() >= deadline:
                raise TimeoutError(f"emulator at {self.base} not ready after {timeout:.0f}s ({last})")
            time.sleep(0.1)

    def state(self) -> dict:
        return self._call("GET", "/lab/state")  # type: ignore[return-value]

    def create_vm(self, name: str, memory_mb: int = 64, disk_mb: int = 128, write_rate_kbps: float = 64,
                  iso: bool = True, checkpoint_type: str = "Standard", start: bool = True, **more) -> dict:
        """Create (and start) a VM; returns its VMInfo. `more`: version, switches, passthrough_disk,
        vm_id (a given id), parent (a base disk the VM's disk is a child of), path (its folder),
        automatic_start_action, dynamic_memory, memory_maximum_mb, memory_assigned_mb, heartbeat,
        heartbeat_enabled, compat_migration, vtpm, clustered, replica, devices, disks, disk_folders."""
        doc = {"name": name, "memory_mb": memory_mb, "disk_mb": disk_mb, "write_rate_kbps": write_rate_kbps,
               "iso": iso, "checkpoint_type": checkpoint_type, "start": start, **more}
        return self._call("POST", "/lab/vms", doc, timeout_s=max(self.timeout_s, 120.0))["vm"]  # type: ignore[index]

    def host_props(self) -> dict:
        return self._call("GET", "/lab/host")  # type: ignore[return-value]

    def set_host(self, **props) -> dict:
        """Change what the host offers: supported_versions, switches, cpu_vendor, free_bytes,
        cpu_model, cpu_features, memory_bytes, numa_nodes, numa_spanning, guardians, sans; and
        fips (the FIPS policy: a script that makes a SHA256Managed is refused)."""
        return self._call("POST", "/lab/host", props)  # type: ignore[return-value]

    def reset_host(self) -> dict:
        return self._call("DELETE", "/lab/host")  # type: ignore[return-value]

    def inject_fault(self, op: str, action: str, seconds: float = 0.0, message: str = "",
                     times: int = 1) -> list[dict]:
        """Arm a fault (see lab.emulator.faults); returns the armed rules."""
        doc = {"op": op, "action": action, "seconds": seconds, "times": times}
        if message:
            doc["message"] = message
        return self._call("POST", "/lab/faults", doc)["faults"]  # type: ignore[index]

    def faults(self) -> list[dict]:
        return self._call("GET", "/lab/faults")["faults"]  # type: ignore[index]

    def clear_faults(self) -> int:
        return self._call("DELETE", "/lab/faults")["cleared"]  # type: ignore[index]

    def outage(self, seconds: float) -> float:
        """Make the WinRM endpoint unreachable (connections closed unanswered) for `seconds`;
        the control API keeps answering. Returns the seconds left."""
        return self._call("POST", "/lab/outage", {"seconds": seconds})["remaining_s"]  # type: ignore[index]

    def outage_remaining(self) -> float:
        return self._call("GET", "/lab/outage")["remaining_s"]  # type: ignore[index]

    def end_outage(self) -> float:
        return self._call("DELETE", "/lab/outage")["remaining_s"]  # type: ignore[index]

    def shutdown_host(self) -> dict:
        """Shut the host down (every running VM saved); its process then ends and its next
        start is a boot. Returns {"host", "saved": [vm ids]}."""
        return self._call("POST", "/lab/shutdown", {}, timeout_s=max(self.timeout_s, 120.0))  # type: ignore[return-value]
