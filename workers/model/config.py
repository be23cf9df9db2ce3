"""quickmig.toml: Redis URL, host inventory (each host's storage folders and their SMB
shares), the host pairs' default storage maps, where credentials come from, and
the settings of each part, all checked when the file is loaded.

Every value is checked once, here, before anything runs: a bad one is a `ConfigError`
naming the file, the table and the key and saying what it accepts, never a failure in the
middle of a migration. Keys this version does not know are refused too, so a misspelt
setting is not silently left at its default.

Credentials are read worker-side from `credentials_file` (never from Redis, never
from a request), so a Celery message or a migration record can never carry one.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from workers.model import hostpaths, keys, redis_endpoint, states
from workers.model.errors import QuickmigError

CONFIG_ENV = "QUICKMIG_CONFIG"
DEFAULT_CONFIG = "quickmig.toml"

REDIS_SCHEMES = ("redis", "rediss", "unix")
WINRM_TRANSPORTS = ("basic", "ntlm", "kerberos", "credssp")
CERT_VALIDATION = ("validate", "ignore")
CA_BUNDLE_SUFFIXES = (".pem", ".crt", ".cer")
# What each transport needs installed beyond pywinrm (the module pywinrm imports for it,
# and the extra of quickmig that brings it).
TRANSPORT_MODULES = {"kerberos": ("kerberos", "kerberos"), "credssp": ("requests_credssp", "credssp")}
COPY_STREAMS_DEFAULT = 4  # docs/benchmarks.md has the measurements behind it
COPY_STREAMS_MAX = 16
LOG_FORMATS = ("text", "json")
API_PORT_DEFAULT = 8780
API_RATE_PER_MINUTE_DEFAULT = 600

# Seconds a migration may sit in a state with no task working on it and no change to its
# record before the reconciler acts. `queued` is long because a backlog legitimately
# waits in the snapshot queue.
RECONCILER_DEADLINES_S = {
    states.QUEUED: 300.0,
    states.SNAPSHOTTING: 60.0,
    states.COPYING: 60.0,
    states.PREPARING: 60.0,
    states.CUTTING_OVER: 30.0,
    states.FINISHING: 60.0,
    states.ROLLING_BACK: 30.0,
}
RECONCILER_MAX_NUDGES = 3
# Every host is looked at every 10 minutes; what a migration left is acted on once it is 15
# minutes old with no record: longer than any step's gap between two writes of its record.
ORPHAN_SWEEP_EVERY_S = 600
ORPHAN_GRACE_S = 900


class ConfigError(QuickmigError):
    """The configuration file is missing or says something we cannot use."""


@dataclass(frozen=True)
class Credentials:
    winrm_username: str
    winrm_password: str
    smb_username: str
    smb_password: str

    def __repr__(self) -> str:  # never let a password reach a log line
        return f"Credentials(winrm_username={self.winrm_username!r}, smb_username={self.smb_username!r})"


# The name of the one storage folder the single-folder form (`vm_root` + `smb_share`) gives a host
DEFAULT_STORAGE_NAME = "vms"


@dataclass(frozen=True)
class Storage:
    """One folder of a host that quickmig may use, and the SMB share that exposes it.
    `name` is its role (the same on every host: `vms`, `data`): with no storage map, a file
    keeps its place relative to the folder of the same name on the destination."""
    path: str   # host folder, e.g. D:\VMs
    share: str  # the SMB share whose root it is
    name: str = DEFAULT_STORAGE_NAME


@dataclass(frozen=True)
class Host:
    name: str
    winrm_endpoint: str
    winrm_transport: str
    vm_root: str  # the first storage folder: where the host keeps its VMs by default
    smb_server: str
    smb_port: int
    smb_share: str  # the share of vm_root
    winrm_cert_validation: str = "validate"
    smb_encrypt: bool = True  # AES-GCM/CCM on every SMB message; off only where the wire is trusted
    # CredSSP hands the account's password to the host: only with this acknowledgement
    winrm_credssp_delegates_credentials: bool = False
    max_copies: int = 2
    max_migrations: int = 2  # migrations at once with this host as source or destination
    storage: tuple[Storage, ...] = ()  # every folder quickmig may use, vm_root's first

    def __post_init__(self) -> None:
        if not self.storage:  # the single-folder form
            object.__setattr__(self, "storage", (Storage(self.vm_root, self.smb_share),))

    @property
    def roots(self) -> list[str]:
        """The folders of this host quickmig may write, delete and grant rights in."""
        return [s.path for s in self.storage]

    def place(self, host_path: str) -> tuple[Storage, str]:
        """The storage folder a host path is in, and the path relative to it (its share's
        root; backslashes); HostPathError for anything but a plain file path strictly
        inside one of them (workers.model.hostpaths has the rules)."""
        hostpaths.confine(host_path, self.roots)
        for s in sorted(self.storage, key=lambda s: -len(s.path)):  # the innermost, if one holds another
            try:
                return s, hostpaths.relative(host_path, s.path)
            except hostpaths.HostPathError:
                continue
        raise hostpaths.HostPathError(f"{host_path!r} is outside the configured root(s)")  # confine said inside

    def confine(self, host_path: str) -> str:
        """`host_path` if quickmig may delete, overwrite or grant rights on it on this host
        (a plain file path inside one of its roots); HostPathError otherwise."""
        return hostpaths.confine(host_path, self.roots)


@dataclass(frozen=True)
class CopySettings:
    """`[copy]`: the copy engine."""
    streams: int = COPY_STREAMS_DEFAULT  # parallel streams per file copy


@dataclass(frozen=True)
class ReconcilerSettings:
    """`[reconciler]`: when a migration counts as stuck, and how often its step is re-sent."""
    deadlines_s: dict[str, float] = field(default_factory=lambda: dict(RECONCILER_DEADLINES_S))
    max_nudges: int = RECONCILER_MAX_NUDGES
    # the orphan sweep (workers.steps.orphans): how often it looks at every host, and how old
    # a quickmig checkpoint or marker with no record must be before it acts on it
    orphan_sweep_every_s: int = ORPHAN_SWEEP_EVERY_S
    orphan_grace_s: int = ORPHAN_GRACE_S


@dataclass(frozen=True)
class LoggingSettings:
    """`[logging]`: the workers' log lines ($QUICKMIG_LOG_FORMAT wins over `format`)."""
    format: str | None = None


@dataclass(frozen=True)
class MetricsSettings:
    """`[metrics]`: where `quickmig metrics-exporter` serves /metrics."""
    port: int | None = None
    addr: str = "127.0.0.1"


@dataclass(frozen=True)
class ApiSettings:
    """`[api]`: where `quickmig api` listens (loopback unless told otherwise)."""
    addr: str = "127.0.0.1"
    port: int = API_PORT_DEFAULT
    rate_per_minute: int = API_RATE_PER_MINUTE_DEFAULT  # requests per token (a token's own limit wins)
    # the CLI talks to this API instead of Redis and the hosts (producer.remote); then the
    # config needs no redis_url and no hosts
    url: str | None = None
    # the server's certificate chain and key (PEM): `quickmig api` serves HTTPS with them
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # the CAs the CLI trusts for an https:// url (PEM); default the system's. There is no
    # setting that turns the check off.
    ca_file: Path | None = None


@dataclass(frozen=True)
class EventSettings:
    """`[events]`: how many state changes the events stream keeps (about; oldest trimmed first)."""
    max_entries: int = keys.EVENTS_MAX_ENTRIES_DEFAULT


@dataclass(frozen=True)
class Webhook:
    """`[webhooks.NAME]`: where state changes are POSTed (producer.webhooks); its secret is in
    the credentials file (`[webhooks.NAME] secret`)."""
    name: str
    url: str
    events: frozenset[str] | None = None  # the states whose entering is delivered; None: every one


@dataclass(frozen=True)
class Config:
    path: Path | None
    redis_url: str
    hosts: dict[str, Host]
    credentials_file: Path | None
    # (source, destination) -> [(source prefix, destination prefix)]: `[storage_maps.SRC.DST]`
    storage_maps: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    # (source, destination) -> [(source switch, destination switch)]: `[switch_maps.SRC.DST]`
    switch_maps: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    lab_dir: Path | None = None
    copy: CopySettings = field(default_factory=CopySettings)
    reconciler: ReconcilerSettings = field(default_factory=ReconcilerSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    events: EventSettings = field(default_factory=EventSettings)
    webhooks: dict[str, Webhook] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise ConfigError(f"unknown host {name!r} (inventory has: {known})") from None

    def credentials(self, host: str) -> Credentials:
        """The host's accounts, read from `credentials_file` (and the secret files and
        environment variables it names) now, so a rotated secret is picked up by the next
        connection."""
        return _host_credentials(_read_secret_toml(self.credentials_file, self.path), host)

    def holds_host_credentials(self) -> bool:
        """Whether this config can reach the hosts itself: a credentials file with host
        accounts ([default] or [hosts]). A producer's config without them has workers look
        VMs up for it (workers.steps.lookup)."""
        if self.credentials_file is None:
            return False
        f = _read_secret_toml(self.credentials_file, self.path)
        return bool(f.default.data or f.hosts.data)

    def redis_credentials(self) -> tuple[str | None, str | None]:
        """(username, password) for Redis from credentials.toml's [redis] table, or Nones."""
        return self._redis_secrets()[:2]

    def _redis_secrets(self) -> tuple[str | None, str | None, str | None, str | None]:
        """credentials.toml's [redis]: user and password for Redis, then for its sentinels."""
        if self.credentials_file is None:
            return None, None, None, None
        t = _read_secret_toml(self.credentials_file, self.path).redis
        base = self.credentials_file.parent
        out = (t.text("username", None), _secret(t, "password", base, optional=True),
               t.text("sentinel_username", None), _secret(t, "sentinel_password", base, optional=True))
        t.done()
        return out

    def broker_url(self) -> str:
        """`redis_url` with the Redis ACL user and password of credentials.toml put in: what
        the store and the Celery broker connect with. Never logged, stored or passed on."""
        return self.redis_target()[0]

    def redis_target(self) -> tuple[str, tuple[str | None, str | None]]:
        """(broker_url, the sentinels' user and password) from one read of credentials.toml:
        what every Redis client quickmig makes connects with (redis_endpoint)."""
        username, password, sentinel_user, sentinel_password = self._redis_secrets()
        sentinel_auth = (sentinel_user, sentinel_password) if self.redis_sentinels() else (None, None)
        if password is None and username is None:
            return self.redis_url, sentinel_auth
        url = urlsplit(self.redis_url)
        if url.scheme == "unix":
            query = "&".join(q for q in (url.query, urlencode({k: v for k, v in
                                                               (("username", username), ("password", password))
                                                               if v is not None})) if q)
            return urlunsplit(url._replace(query=query)), sentinel_auth
        return redis_endpoint.with_auth(self.redis_url, username, password), sentinel_auth

    def redis_sentinels(self) -> bool:
        """Whether redis_url names a master under Sentinel (rather than one server)."""
        return redis_endpoint.is_sentinel(self.redis_url)

    def redis_client(self, **kw: Any) -> redis.Redis:
        """A Redis client of the fleet's store (kw: redis-py's connection options), following
        the master through a Sentinel failover when redis_url names sentinels."""
        return redis_endpoint.connect(*self.redis_target(), **kw)

    def async_redis_client(self, **kw: Any) -> aioredis.Redis:
        return redis_endpoint.connect_async(*self.redis_target(), **kw)

    def api_token(self) -> str | None:
        """The CLI's bearer token for the HTTP API ([api] url): credentials.toml's `[api] token`,
        `token_file` or `token_env`, or None."""
        if self.credentials_file is None:
            return None
        t = _read_secret_toml(self.credentials_file, self.path).api
        token = _secret(t, "token", self.credentials_file.parent, optional=True)
        t.done()
        return token.strip() if token is not None else None

    def webhook_secrets(self) -> dict[str, str]:
        """NAME -> the secret webhook NAME signs with: credentials.toml's `[webhooks.NAME]
        secret`, `secret_file` or `secret_env`, read now (a rotated secret is picked up)."""
        return self._signing_secrets("webhooks")

    def hook_secrets(self) -> dict[str, str]:
        """NAME -> the secret a plan's hook naming `secret: NAME` signs with: credentials.toml's
        `[hooks.NAME] secret`, `secret_file` or `secret_env`, read now."""
        return self._signing_secrets("hooks")

    def _signing_secrets(self, table: str) -> dict[str, str]:
        if self.credentials_file is None:
            return {}
        f = _read_secret_toml(self.credentials_file, self.path)
        out = {}
        for name, data in getattr(f, table).data.items():
            t = _Table(data, f"{f.path} [{table}.{name}]")
            secret = _secret(t, "secret", self.credentials_file.parent)
            t.done()
            if len(secret) < WEBHOOK_SECRET_MIN:
                raise ConfigError(f"{t.where}: the secret must be at least {WEBHOOK_SECRET_MIN} characters")
            out[name] = secret
        return out

    def warnings(self) -> list[str]:
        """What is allowed but weakens the fleet's security: said at start and by `config check`."""
        out = [f"host {h.name}: winrm_transport 'credssp' delegates the WinRM account's password to the "
               "host (a compromised host keeps it); prefer ntlm or kerberos over https"
               for h in self.hosts.values() if h.winrm_transport == "credssp"]
        url = urlsplit(self.api.url or "")
        if url.scheme == "http" and url.hostname not in ("127.0.0.1", "::1", "localhost"):
            out.append(f"[api] url {self.api.url} is plain HTTP to another machine: the token and every "
                       "answer cross the network readable; serve the API over https (its [api] tls_cert)")
        return out

    def check_credentials(self) -> None:
        """Every host's accounts and Redis's can be read: what a worker needs before its first task."""
        for name in self.hosts:
            self.credentials(name)
        self.redis_credentials()


def secret_file_problem(path: Path) -> str | None:
    """Why `path` may not hold a secret (group or others may read or write it), else None."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"is open to group or others (mode {mode:04o}); run: chmod 600 {path}"
    return None


def _read_private(path: Path, what: str) -> str:
    """The text of a file holding secrets, refused when group or others may open it."""
    try:
        problem = secret_file_problem(path)
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    if problem:
        raise ConfigError(f"{what} {path} {problem}")
    return text


@dataclass
class _SecretToml:
    path: Path
    default: _Table
    hosts: _Table
    redis: _Table
    api: _Table  # the CLI's token for the HTTP API
    webhooks: _Table  # the webhooks' secrets
    hooks: _Table  # the secrets plans' hooks sign with


def _read_secret_toml(path: Path | None, config_path: Path | None) -> _SecretToml:
    if path is None:
        raise ConfigError(f"{config_path}: credentials_file is required (the hosts' accounts)")
    text = _read_private(path, "credentials file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"credentials file {path} is not valid TOML: {e}") from None
    top = _Table(data, str(path))
    out = _SecretToml(path, top.table("default"), top.table("hosts"), top.table("redis"), top.table("api"),
                      top.table("webhooks"), top.table("hooks"))
    # read and checked by its own reader: the HTTP API's token hashes (producer.api.auth)
    top.read.add("api_tokens")
    top.done()
    return out


def _secret(t: _Table, key: str, base: Path, *, optional: bool = False) -> Any:
    """A secret given as `key` (in this file), `key_file` (a file of its own: systemd's
    LoadCredential, a Kubernetes Secret mount) or `key_env` (an environment variable):
    exactly one of them."""
    given = [k for k in (key, f"{key}_file", f"{key}_env") if k in t.data]
    if len(given) > 1:
        raise ConfigError(f"{t.where}: give one of {key}, {key}_file, {key}_env, not {' and '.join(given)}")
    if not given:
        if optional:
            return None
        raise ConfigError(f"{t.where}: {key} is required (or {key}_file, or {key}_env)")
    source = given[0]
    value = t.text(source)
    if source == key:
        return value
    if source.endswith("_file"):
        file = base / value  # relative to the credentials file's folder; an absolute path stays
        secret = _read_private(file, f"{t.where}: {source}").rstrip("\r\n")
        where = f"{t.where}: {source} {file}"
    else:
        secret = os.environ.get(value, "")
        where = f"{t.where}: {source}: the environment variable {value}"
    if not secret:
        raise ConfigError(f"{where} is empty or not set")
    return secret


SECRET_FIELDS = ("winrm_password", "smb_password")
WEBHOOK_SECRET_MIN = 16  # characters: an HMAC key a receiver cannot guess


def _host_credentials(f: _SecretToml, host: str) -> Credentials:
    merged = dict(f.default.data)
    where = f"{f.path} [default]"
    if host in f.hosts.data:
        own = _Table(f.hosts.data[host], f"{f.path} [hosts.{host}]").data
        for k in SECRET_FIELDS:  # a host's own source of a secret replaces [default]'s, whichever it is
            if any(v in own for v in (k, f"{k}_file", f"{k}_env")):
                for v in (k, f"{k}_file", f"{k}_env"):
                    merged.pop(v, None)
        merged.update(own)
        where = f"{f.path} [hosts.{host}]"
    t = _Table(merged, where)
    base = f.path.parent
    creds = Credentials(winrm_username=t.text("winrm_username"), winrm_password=_secret(t, "winrm_password", base),
                        smb_username=t.text("smb_username"), smb_password=_secret(t, "smb_password", base))
    t.done()
    return creds


# -- reading and checking the file -----------------------------------------------------

_MISSING = object()


class _Table:
    """One TOML table being read: typed getters that name the key in every error, and a
    check that no key was left unread."""

    def __init__(self, data: object, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.read: set[str] = set()

    def _get(self, key: str, default: object) -> object:
        self.read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ConfigError(f"{self.where}: {key} is required")
        return default

    def text(self, key: str, default: object = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and (not isinstance(value, str) or not value):
            raise ConfigError(f"{self.where}: {key} must be a non-empty string, not {value!r}")
        return value

    def whole(self, key: str, default: object = _MISSING, *, low: int = 1, high: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise ConfigError(f"{self.where}: {key} must be a whole number {span}, not {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where}: {key} must be true or false, not {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: object = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and value not in choices:
            raise ConfigError(f"{self.where}: {key} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self._get(key, {}), f"{self.where} [{key}]" if self.where.endswith(".toml") else
                      f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            raise ConfigError(f"{self.where}: unknown key {unknown[0]!r} (known here: {known})")


def _storage(t: _Table) -> tuple[Storage, ...]:
    """`storage = [{path, share, name}, ...]`, or the single-folder form `vm_root` + `smb_share`
    (one folder named `vms`); not both."""
    if "storage" not in t.data:
        t.read.add("storage")
        root = t.text("vm_root")
        problem = hostpaths.root_problem(root)
        if problem:
            raise ConfigError(f"{t.where}: vm_root must be a folder such as 'D:\\VMs' ({problem}), not {root!r}")
        return (Storage(root, t.text("smb_share")),)
    given = t._get("storage", _MISSING)
    if "vm_root" in t.data or "smb_share" in t.data:
        raise ConfigError(f"{t.where}: give either storage (a list of folders) or vm_root and smb_share, not both")
    if not isinstance(given, list) or not given:
        raise ConfigError(f"{t.where}: storage must be a list of {{ path = 'D:\\VMs', share = \"VMs\" }} tables")
    out: list[Storage] = []
    for i, item in enumerate(given):
        st = _Table(item, f"{t.where} storage[{i}]")
        entry = Storage(path=st.text("path"), share=st.text("share"), name=st.text("name", None) or st.text("share"))
        st.done()
        problem = hostpaths.root_problem(entry.path)
        if problem:
            raise ConfigError(f"{st.where}: path must be a folder such as 'D:\\VMs' ({problem}), not {entry.path!r}")
        for other in out:
            for what in ("path", "share", "name"):
                if getattr(other, what).rstrip("\\").lower() == getattr(entry, what).rstrip("\\").lower():
                    raise ConfigError(f"{st.where}: {what} {getattr(entry, what)!r} is given twice")
        out.append(Storage(entry.path.rstrip("\\"), entry.share, entry.name))
    return tuple(out)


def _host_name(name: str, hosts: _Table) -> str:
    # a host's name goes into Redis keys, metric labels and terminal output
    if not name or not name.isprintable() or name != name.strip():
        raise ConfigError(f"{hosts.where}: host name {name!r} must be printable text without leading or "
                          "trailing spaces")
    return name


def _host(name: str, t: _Table) -> Host:
    storage = _storage(t)
    endpoint = _winrm_endpoint(t)
    host = Host(
        name=name,
        winrm_endpoint=endpoint,
        winrm_transport=_winrm_transport(t, endpoint),
        winrm_cert_validation=_cert_validation(t, endpoint),
        winrm_credssp_delegates_credentials=t.flag("winrm_credssp_delegates_credentials", False),
        smb_encrypt=t.flag("smb_encrypt", True),
        vm_root=storage[0].path,
        smb_server=t.text("smb_server"),
        smb_port=t.whole("smb_port", 445, high=65535),
        smb_share=storage[0].share,
        max_copies=t.whole("max_copies", 2),
        max_migrations=t.whole("max_migrations", 2),
        storage=storage,
    )
    if host.winrm_transport == "credssp" and not host.winrm_credssp_delegates_credentials:
        raise ConfigError(f"{t.where}: winrm_transport 'credssp' hands the account's password to the host; "
                          "set winrm_credssp_delegates_credentials = true to accept that, or use ntlm or "
                          "kerberos")
    t.done()
    return host


def prefix_problem(host: Host, prefix: str) -> str | None:
    """Why `prefix` cannot be where files land on `host`: a plain path, one of its storage
    folders or inside one."""
    problem = hostpaths.path_problem(prefix)
    if problem:
        return problem
    if any(hostpaths.same(prefix.rstrip("\\"), root) for root in host.roots):
        return None
    try:
        host.confine(prefix)
    except hostpaths.HostPathError:
        return f"it is in no storage folder of {host.name} ({', '.join(host.roots)})"
    return None


def _host_pairs(t: _Table, hosts: dict[str, Host]) -> Iterator[tuple[str, str, _Table]]:
    """The `[<table>.SRC.DST]` tables of known host pairs, each with its (source, destination)."""
    for src in list(t.data):
        src_t = t.table(src)
        for dst in list(src_t.data):
            pair_t = src_t.table(dst)
            for role, h in (("source", src), ("destination", dst)):
                if h not in hosts:
                    raise ConfigError(f"{pair_t.where}: unknown {role} host {h!r}")
            yield src, dst, pair_t
        src_t.done()


def _storage_maps(t: _Table, hosts: dict[str, Host]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """`[storage_maps.SRC.DST]`: 'SRC_PREFIX' = 'DST_PREFIX', the pair's default placement."""
    out = {}
    for src, dst, pair_t in _host_pairs(t, hosts):
        pairs = []
        for s_prefix in list(pair_t.data):
            d_prefix = pair_t.text(s_prefix)
            problem = hostpaths.path_problem(s_prefix.rstrip("\\")) or prefix_problem(hosts[dst], d_prefix)
            if problem:
                raise ConfigError(f"{pair_t.where}: {s_prefix!r} = {d_prefix!r} is refused: {problem}")
            pairs.append((s_prefix.rstrip("\\"), d_prefix.rstrip("\\")))
        pair_t.done()
        out[(src, dst)] = pairs
    return out


def _is_loopback(hostname: str | None) -> bool:
    try:
        return ipaddress.ip_address(hostname or "").is_loopback
    except ValueError:
        return hostname == "localhost"


def _winrm_endpoint(t: _Table) -> str:
    endpoint = t.text("winrm_endpoint")
    try:
        url = urlsplit(endpoint)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        url = None
    if url is None or url.scheme.lower() not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{t.where}: winrm_endpoint must be an http:// or https:// URL "
                          f"(e.g. https://hv1.example:5986/wsman), not {endpoint!r}")
    return endpoint


def _winrm_transport(t: _Table, endpoint: str) -> str:
    transport = t.choice("winrm_transport", WINRM_TRANSPORTS, "ntlm")
    url = urlsplit(endpoint)
    if transport == "basic" and url.scheme.lower() != "https" and not _is_loopback(url.hostname):
        raise ConfigError(f"{t.where}: winrm_transport 'basic' sends the password in the clear over "
                          f"{endpoint}; use an https:// endpoint or ntlm/kerberos (plain http with basic "
                          "is only for loopback lab hosts)")
    if transport in TRANSPORT_MODULES:
        module, extra = TRANSPORT_MODULES[transport]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{t.where}: winrm_transport {transport!r} needs the Python module {module!r}, "
                              f"which is not installed: pip install 'quickmig[{extra}]'")
    return transport


def _cert_validation(t: _Table, endpoint: str) -> str:
    validation = t.text("winrm_cert_validation", "validate")
    if validation not in CERT_VALIDATION and not validation.endswith(CA_BUNDLE_SUFFIXES):
        raise ConfigError(f"{t.where}: winrm_cert_validation must be 'validate', 'ignore' or the path of "
                          f"a CA bundle (.pem/.crt/.cer), not {validation!r}")
    if validation == "ignore" and not _is_loopback(urlsplit(endpoint).hostname):
        raise ConfigError(f"{t.where}: winrm_cert_validation 'ignore' accepts any certificate from "
                          f"{endpoint}, so anyone on the path can read the WinRM session; it is only for "
                          "loopback endpoints: use 'validate' or the path of the CA bundle that issued "
                          "the host's certificate")
    return validation


def _reconciler(t: _Table) -> ReconcilerSettings:
    deadlines = dict(RECONCILER_DEADLINES_S)
    given = t.table("deadlines_s")
    for st in list(given.data):
        if st not in deadlines:
            raise ConfigError(f"{given.where}: unknown state {st!r} (known: {', '.join(sorted(deadlines))})")
        value = given.data[st]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigError(f"{given.where}: {st} must be a number of seconds above 0, not {value!r}")
        deadlines[st] = float(value)
    settings = ReconcilerSettings(deadlines_s=deadlines,
                                  max_nudges=t.whole("max_nudges", RECONCILER_MAX_NUDGES, low=0),
                                  orphan_sweep_every_s=t.whole("orphan_sweep_every_s", ORPHAN_SWEEP_EVERY_S, low=1),
                                  orphan_grace_s=t.whole("orphan_grace_s", ORPHAN_GRACE_S, low=1))
    t.done()
    return settings


def _settings(top: _Table, base: Path) -> dict[str, Any]:
    """The optional tables, each checked whole (`base`: the folder relative paths start from)."""
    copy_t, log_t, metrics_t, lab_t, api_t, events_t = (
        top.table(k) for k in ("copy", "logging", "metrics", "lab", "api", "events"))
    out = {
        "copy": CopySettings(streams=copy_t.whole("streams", COPY_STREAMS_DEFAULT, high=COPY_STREAMS_MAX)),
        "reconciler": _reconciler(top.table("reconciler")),
        "logging": LoggingSettings(format=log_t.choice("format", LOG_FORMATS, None)),
        "metrics": MetricsSettings(port=metrics_t.whole("port", None, high=65535),
                                   addr=metrics_t.text("addr", "127.0.0.1")),
        "lab_dir": _optional_path(lab_t.text("dir", None)),
        "api": ApiSettings(addr=api_t.text("addr", "127.0.0.1"),
                           port=api_t.whole("port", API_PORT_DEFAULT, high=65535),
                           rate_per_minute=api_t.whole("rate_per_minute", API_RATE_PER_MINUTE_DEFAULT),
                           url=_api_url(api_t), **_api_tls(api_t, base)),
        "events": EventSettings(max_entries=events_t.whole("max_entries", keys.EVENTS_MAX_ENTRIES_DEFAULT, low=100)),
    }
    for t in (copy_t, log_t, metrics_t, lab_t, api_t, events_t):
        t.done()
    return out


def _api_url(t: _Table) -> str | None:
    url = t.text("url", None)
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        raise ConfigError(f"{t.where}: url must be an http:// or https:// URL, not {url!r}")
    return url.rstrip("/") if url is not None else None


def _api_tls(t: _Table, base: Path) -> dict[str, Path | None]:
    """tls_cert and tls_key (both or neither) and ca_file, relative to the config's folder."""
    out = {k: (base / v if (v := t.text(k, None)) is not None else None) for k in ("tls_cert", "tls_key", "ca_file")}
    if (out["tls_cert"] is None) != (out["tls_key"] is None):
        raise ConfigError(f"{t.where}: give both tls_cert and tls_key (HTTPS), or neither (plain HTTP)")
    if out["ca_file"] is not None and not (t.data.get("url") or "").startswith("https://"):
        raise ConfigError(f"{t.where}: ca_file is the CAs an https:// url is checked against; url is not https://")
    return out


def _webhooks(t: _Table) -> dict[str, Webhook]:
    out = {}
    known = states.ACTIVE + tuple(sorted(states.ENDS))
    for name in list(t.data):
        w = t.table(name)
        url = w.text("url")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ConfigError(f"{w.where}: url must be an http:// or https:// URL, not {url!r}")
        wanted = w._get("events", None)
        if wanted is not None and (not isinstance(wanted, list) or not wanted
                                   or any(e not in known for e in wanted)):
            raise ConfigError(f"{w.where}: events must be a list of states ({', '.join(known)}), not {wanted!r}")
        w.done()
        out[name] = Webhook(name, url, frozenset(wanted) if wanted is not None else None)
    return out


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None


def _redis_url(top: _Table) -> str:
    url = top.text("redis_url")
    scheme = urlsplit(url).scheme
    if scheme in redis_endpoint.SENTINEL_SCHEMES:
        try:
            redis_endpoint.parse_sentinel(url)
        except redis_endpoint.RedisUrlError as e:
            raise ConfigError(f"{top.where}: redis_url: {e}") from None
        return url
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(f"{top.where}: redis_url must be a redis://, rediss://, unix://, redis+sentinel:// or "
                          f"rediss+sentinel:// URL, not {url!r}")
    reqs = parse_qs(urlsplit(url).query).get("ssl_cert_reqs", ["required"])
    if scheme == "rediss" and [r.lower() for r in reqs] not in (["required"], ["cert_required"]):
        raise ConfigError(f"{top.where}: redis_url asks for ssl_cert_reqs={reqs[-1]}; quickmig verifies Redis's "
                          "certificate always (name the CA with ?ssl_ca_certs=/path/ca.pem)")
    return url


def _switch_maps(t: _Table, hosts: dict[str, Host]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """`[switch_maps.SRC.DST]`: "source switch" = "destination switch", the pair's default."""
    out = {}
    for src, dst, pair_t in _host_pairs(t, hosts):
        out[(src, dst)] = [(s, pair_t.text(s)) for s in list(pair_t.data)]
        pair_t.done()
    return out


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
    except OSError as e:
        raise ConfigError(f"cannot read the config {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    top = _Table(data, str(path))
    # a CLI that talks to the API ([api] url) needs no Redis: the API has it
    api_only = "redis_url" not in data and isinstance(data.get("api"), dict) and "url" in data["api"]
    redis_url = "" if api_only else _redis_url(top)
    hosts_t = top.table("hosts")
    hosts = {_host_name(name, hosts_t): _host(name, _Table(h, f"{path} [hosts.{name}]"))
             for name, h in hosts_t.data.items()}
    cred = top.text("credentials_file", None)
    settings = _settings(top, path.parent)
    maps = _storage_maps(top.table("storage_maps"), hosts)
    switch_maps = _switch_maps(top.table("switch_maps"), hosts)
    webhooks = _webhooks(top.table("webhooks"))
    top.done()
    return Config(path=path, redis_url=redis_url, hosts=hosts, storage_maps=maps, switch_maps=switch_maps,
                  credentials_file=(path.parent / cred) if cred else None, webhooks=webhooks,
                  **settings)


def toml_str(value: str) -> str:
    """A TOML basic string; JSON's ASCII escapes are valid TOML escapes."""
    return json.dumps(value, ensure_ascii=True)
