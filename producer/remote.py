"""The CLI as a client of the HTTP API: with `[api] url` in its config, `quickmig migrate`,
`status`, `list`, `cancel` and `throttle` ask the API instead of Redis and the hosts, so the
machine running the CLI needs neither Redis access nor the hosts' credentials, only a bearer
token: `$QUICKMIG_API_TOKEN`, else `[api] token` (or token_file, token_env) in the
credentials file.

`Remote` has the methods of producer.migrations.Producer that those commands use, with the
same results (the API returns the records the Producer makes); a refusal is a RequestError
whose message is the problem's `detail`, the line the CLI would print itself.
"""
from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from producer.migrations import MigrationRequest, RequestError, follow
from workers.model import config as config_mod

TOKEN_ENV = "QUICKMIG_API_TOKEN"
TIMEOUT_S = 120.0  # an enqueue looks the VM up on the hosts (each within 60 s)


def token_of(cfg: config_mod.Config) -> str:
    """The bearer token: $QUICKMIG_API_TOKEN, else the credentials file's `[api] token` (or
    `token_file`, or `token_env`; the file's mode checked as for every secret)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    token = cfg.api_token()
    if token:
        return token
    raise config_mod.ConfigError(f"[api] url is set but there is no API token: set ${TOKEN_ENV}, or "
                                 "[api] token (or token_file, or token_env) in the credentials file")


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """What an https:// API is checked with: its certificate must chain to `ca_file`'s CAs (else
    the system's) and name the URL's host. Nothing turns the check off."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as e:
        raise config_mod.ConfigError(f"[api] ca_file {ca_file}: {getattr(e, 'strerror', None) or e}") from None


class Remote:
    def __init__(self, url: str, token: str, timeout_s: float = TIMEOUT_S, ca_file: Path | None = None):
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s
        self.tls = tls_context(ca_file)

    @classmethod
    def of(cls, cfg: config_mod.Config) -> Remote | None:
        """The API client the config asks for, or None (the CLI talks to Redis itself)."""
        return cls(cfg.api.url, token_of(cfg), ca_file=cfg.api.ca_file) if cfg.api.url else None

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self.tls) as res:
                return json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw)["detail"]
            except (ValueError, KeyError, TypeError):
                detail = f"HTTP {e.code} from the API at {self.url}"
            raise RequestError(str(detail).splitlines()[0] if str(detail) else f"HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise RequestError(f"the API at {self.url} has a certificate this machine does not trust "
                                   f"({reason.verify_message}): name its CA in [api] ca_file") from None
            raise RequestError(f"cannot reach the API at {self.url}: {reason}") from None

    @staticmethod
    def _body(req: MigrationRequest) -> dict[str, Any]:
        return {"vm": req.vm, "source": req.source, "destination": req.destination, **req.options}

    def plan_dry_run(self, plan: Any) -> dict:
        return self.call("POST", "/v1/plans:dry-run", plan)

    def plan_apply(self, plan: Any) -> dict:
        return self.call("POST", "/v1/plans", plan)

    def plan_status(self, pid: str) -> dict:
        return self.call("GET", f"/v1/plans/{urllib.parse.quote(pid, safe='')}")

    def plan_cancel(self, pid: str) -> dict:
        return self.call("POST", f"/v1/plans/{urllib.parse.quote(pid, safe='')}/cancel")

    def plan_wait(self, pid: str, timeout_s: float | None = None, poll_s: float = 1.0,
                  on_change: Callable[[dict], object] | None = None) -> dict:
        """Follow a plan over the API until it ends; TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            st = self.plan_status(pid)
            seen = (st["state"], tuple(sorted(st["counts"].items())))
            if on_change and seen != last:
                on_change(st)
            last = seen
            if st["state"] != "running":
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"plan {pid} still running after {timeout_s}s")
            time.sleep(poll_s)

    def dry_run(self, req: MigrationRequest) -> dict:
        return self.call("POST", "/v1/migrations:dry-run", self._body(req))

    def enqueue(self, req: MigrationRequest) -> dict:
        # a key of this call's own: should the answer be lost and the call repeated, one migration
        return self.call("POST", "/v1/migrations", self._body(req), {"Idempotency-Key": uuid.uuid4().hex})

    def get(self, mid: str) -> dict:
        return self.call("GET", f"/v1/migrations/{urllib.parse.quote(mid, safe='')}")

    def note_waiting(self, recs: list[dict]) -> list[dict]:
        return recs  # the API's records already say why they wait

    def list(self, limit: int = 100) -> list[dict]:
        out: list[dict] = []
        cursor = None
        while len(out) < limit:
            q = {"limit": str(min(limit - len(out), 500))}
            if cursor:
                q["cursor"] = cursor
            page = self.call("GET", "/v1/migrations?" + urllib.parse.urlencode(q))
            out += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out[:limit]

    def cancel(self, mid: str) -> dict:
        return self.call("POST", f"/v1/migrations/{urllib.parse.quote(mid, safe='')}/cancel")

    def wait(self, mid: str, timeout_s: float | None = None, poll_s: float = 1.0,
             on_change: Callable[[dict], object] | None = None) -> dict:
        return follow(self.get, mid, timeout_s, poll_s, on_change)

    def throttle(self, global_rate: int | None, pair: tuple[str, str, int] | None) -> dict:
        """Set what is given (nothing: only read) and return the limits, as Throttle.limits()."""
        if global_rate is None and pair is None:
            return self.call("GET", "/v1/throttle")
        body: dict[str, Any] = {"pairs": []}
        if global_rate is not None:
            body["global"] = global_rate
        if pair is not None:
            body["pairs"] = [{"source": pair[0], "destination": pair[1], "rate": pair[2]}]
        return self.call("PUT", "/v1/throttle", body)
