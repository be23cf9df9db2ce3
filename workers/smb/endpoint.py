"""Where a share is and how to log on to it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from workers.model.config import Credentials, Host


class Options(TypedDict, total=False):
    """SmbEndpoint's fields that do not come from the inventory."""

    require_signing: bool
    encrypt: bool
    lane: int


@dataclass(frozen=True)
class SmbEndpoint:
    """One share on one SMB server, with the account that opens it.

    `require_signing` and `encrypt` are the client's security floor, both on by default:
    signing (AES-GMAC on SMB 3.1.1) of every message, and encryption (AES-GCM) of every
    message; an inventory host turns encryption off with `smb_encrypt = false` (a server
    that demands it encrypts anyway). SMB 3.0 or later is required either way
    (`workers.smb.connections`). The password never appears in repr().

    `lane` picks one of this process's sets of cached connections to the share
    (`workers.smb.connections`): a connection carries one stream at a time, so copies
    that run at the same time in one process each take a lane of their own
    (`dataclasses.replace(ep, lane=n)`).
    """

    server: str
    port: int
    share: str
    username: str
    password: str = field(repr=False)
    require_signing: bool = True
    encrypt: bool = True
    lane: int = 0

    @classmethod
    def for_host(cls, host: Host, credentials: Credentials, **options: Unpack[Options]) -> SmbEndpoint:
        """The endpoint of an inventory host's VM share (encrypted unless its `smb_encrypt` is false)."""
        options.setdefault("encrypt", host.smb_encrypt)
        return cls(host.smb_server, host.smb_port, host.smb_share,
                   credentials.smb_username, credentials.smb_password, **options)

    @property
    def unc_root(self) -> str:
        """\\\\server\\share, with :port when it is not 445 (for messages; not a real UNC)."""
        server = self.server if self.port == 445 else f"{self.server}:{self.port}"
        return f"\\\\{server}\\{self.share}"

    def on_share(self, share: str) -> SmbEndpoint:
        """The same server, account and lane, another share of it (a host has one per storage
        folder; they share the connection, each with its own tree connect)."""
        return self if share == self.share else dataclasses.replace(self, share=share)

    def unc(self, rel: str) -> str:
        return f"{self.unc_root}\\{rel}" if rel else self.unc_root


def normalize_rel(rel: str) -> str:
    """A share-relative path with backslashes; refuses '..', empty parts and absolute paths."""
    if not isinstance(rel, str):
        raise TypeError(f"share-relative path must be str, not {type(rel).__name__}")
    norm = rel.replace("/", "\\")
    parts = norm.split("\\")
    if not norm or norm.startswith("\\") or any(p in ("", ".", "..") for p in parts) or ":" in norm:
        raise ValueError(f"{rel!r} is not a path relative to a share root (backslashes, no '..')")
    return norm
