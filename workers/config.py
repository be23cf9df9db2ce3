"""quickmig.toml: Redis URL, host inventory, path mapping, where credentials come from.

Credentials are read worker-side from `credentials_file` (never from Redis, never
from a request), so a Celery message or a migration record can never carry one.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_ENV = "QUICKMIG_CONFIG"
DEFAULT_CONFIG = "quickmig.toml"


class ConfigError(Exception):
    """The configuration file is missing or says something we cannot use."""


@dataclass(frozen=True)
class Credentials:
    winrm_username: str
    winrm_password: str
    smb_username: str
    smb_password: str

    def __repr__(self) -> str:  # never let a password reach a log line
        return f"Credentials(winrm_username={self.winrm_username!r}, smb_username={self.smb_username!r})"


@dataclass(frozen=True)
class Host:
    name: str
    winrm_endpoint: str
    winrm_transport: str
    vm_root: str  # host-side folder (e.g. D:\VMs\hv1) that the SMB share exposes
    smb_server: str
    smb_port: int
    smb_share: str
    winrm_cert_validation: str = "validate"
    max_copies: int = 2
    max_migrations: int = 2  # migrations at once with this host as source or destination

    def to_rel(self, host_path: str) -> str:
        """Host path under vm_root -> path relative to the share root (backslashes)."""
        root = self.vm_root.rstrip("\\") + "\\"
        if not host_path.lower().startswith(root.lower()):
            raise ConfigError(f"{host_path!r} is not under {self.name}'s vm_root {self.vm_root!r}")
        rel = host_path[len(root):]
        if not rel or any(part in ("", ".", "..") for part in rel.split("\\")):
            raise ConfigError(f"{host_path!r} is not a file path under {self.vm_root!r}")
        return rel

    def from_rel(self, rel: str) -> str:
        return self.vm_root.rstrip("\\") + "\\" + rel

    def smb_path(self, rel: str) -> str:
        return f"\\\\{self.smb_server}\\{self.smb_share}\\{rel}"


@dataclass(frozen=True)
class Config:
    path: Path
    redis_url: str
    hosts: dict[str, Host]
    credentials_file: Path | None
    lab_dir: Path | None = None
    metrics_port: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"unknown host {name!r} (inventory has: {known})") from None

    def credentials(self, host: str) -> Credentials:
        if self.credentials_file is None:
            raise ConfigError(f"{self.path}: no credentials_file configured")
        try:
            data = tomllib.loads(self.credentials_file.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read credentials file {self.credentials_file}: {e.strerror}") from None
        merged = dict(data.get("default", {}))
        merged.update(data.get("hosts", {}).get(host, {}))
        try:
            return Credentials(**{k: merged[k] for k in
                                  ("winrm_username", "winrm_password", "smb_username", "smb_password")})
        except KeyError as e:
            raise ConfigError(f"credentials file has no {e.args[0]} for host {host!r}") from None


def _at_least_one(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a whole number of at least 1, not {value!r}")
    return value


def find_config_path(explicit: str | os.PathLike | None = None) -> Path:
    """--config FILE, else $QUICKMIG_CONFIG, else ./quickmig.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path(DEFAULT_CONFIG)


def load_config(explicit: str | os.PathLike | None = None) -> Config:
    path = find_config_path(explicit).resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config at {path} (use --config FILE or set {CONFIG_ENV})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    hosts = {}
    for name, h in data.get("hosts", {}).items():
        try:
            hosts[name] = Host(
                name=name,
                winrm_endpoint=h["winrm_endpoint"],
                winrm_transport=h.get("winrm_transport", "ntlm"),
                winrm_cert_validation=h.get("winrm_cert_validation", "validate"),
                vm_root=h["vm_root"],
                smb_server=h["smb_server"],
                smb_port=int(h.get("smb_port", 445)),
                smb_share=h["smb_share"],
                max_copies=int(h.get("max_copies", 2)),
                max_migrations=_at_least_one(h.get("max_migrations", 2),
                                             f"{path}: host {name!r}: max_migrations"),
            )
        except KeyError as e:
            raise ConfigError(f"{path}: host {name!r} lacks {e.args[0]}") from None
    if "redis_url" not in data:
        raise ConfigError(f"{path}: redis_url is required")
    cred = data.get("credentials_file")
    lab = data.get("lab", {}).get("dir")
    return Config(
        path=path,
        redis_url=data["redis_url"],
        hosts=hosts,
        credentials_file=(path.parent / cred) if cred else None,
        lab_dir=Path(lab) if lab else None,
        metrics_port=data.get("metrics", {}).get("port"),
        raw=data,
    )


def toml_str(value: str) -> str:
    """A TOML basic string; JSON's ASCII escapes are valid TOML escapes."""
    import json
    return json.dumps(value, ensure_ascii=True)
