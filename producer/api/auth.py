"""Bearer tokens: who a caller is and what it may do.

A token is a random string the caller holds; the credentials file holds only its SHA-256,
with a name and scopes:

    [api_tokens.ci-bot]
    sha256 = "<hex digest of the token>"
    scopes = ["migrate"]
    rate_per_minute = 120          # optional: this token's request limit instead of [api]'s

Scopes rank read < migrate < admin: a token may do what its highest scope allows (reading
is part of migrating, changing limits is the admin's). The file is read again when it
changes, so adding or revoking a token needs no restart.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from workers.model.config import ConfigError

SCOPES = ("read", "migrate", "admin")
TABLE = "api_tokens"

log = logging.getLogger("quickmig.api.auth")


@dataclass(frozen=True)
class Caller:
    name: str
    scope: str  # the highest it was given
    rate_per_minute: int | None = None  # None: [api] rate_per_minute

    def may(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_entry(name: str, token: str, scopes: list[str]) -> str:
    """The credentials file's table for `token` (what `quickmig api token` prints)."""
    quoted = ", ".join(f'"{s}"' for s in scopes)
    return f'[{TABLE}.{name}]\nsha256 = "{digest(token)}"\nscopes = [{quoted}]\n'


def parse(data: dict, where: str) -> dict[str, Caller]:
    """digest -> Caller from a credentials file's tables; ConfigError naming what to fix."""
    tokens = data.get(TABLE, {})
    if not isinstance(tokens, dict):
        raise ConfigError(f"{where}: [{TABLE}] must be a table of tokens, one per name")
    out: dict[str, Caller] = {}
    for name, t in tokens.items():
        here = f"{where} [{TABLE}.{name}]"
        if not isinstance(t, dict) or set(t) - {"sha256", "scopes", "rate_per_minute"}:
            raise ConfigError(f"{here}: takes sha256, scopes and rate_per_minute only")
        h = t.get("sha256")
        if not isinstance(h, str) or len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
            raise ConfigError(f"{here}: sha256 must be the 64 hex digits of the token's SHA-256")
        scopes = t.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigError(f"{here}: scopes must be a list of {', '.join(SCOPES)}")
        rate = t.get("rate_per_minute")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate < 1):
            raise ConfigError(f"{here}: rate_per_minute must be a whole number of at least 1")
        if h.lower() in out:
            raise ConfigError(f"{here}: the same token as {out[h.lower()].name!r}")
        out[h.lower()] = Caller(name, max(scopes, key=SCOPES.index), rate)
    return out


class Tokens:
    """The tokens of a credentials file, read again whenever the file changes."""

    def __init__(self, path: Path | None):
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._callers: dict[str, Caller] = {}
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._seen:
                return
            callers = parse(tomllib.loads(self.path.read_text()), str(self.path))
        except (OSError, tomllib.TOMLDecodeError, ConfigError) as e:
            if strict:
                raise ConfigError(f"cannot read the API tokens in {self.path}: {e}") from None
            # keep the last good set: a half-written file must not lock everyone out
            log.warning("API tokens not reloaded from %s: %s", self.path, e)
            return
        self._callers, self._seen = callers, stamp

    def caller(self, token: str) -> Caller | None:
        self._load(strict=False)
        h = digest(token)
        found = None
        for known, who in self._callers.items():  # every entry compared, in constant time each
            if hmac.compare_digest(known, h):
                found = who
        return found
