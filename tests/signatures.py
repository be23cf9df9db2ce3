"""A webhook or hook receiver's check of `Quickmig-Signature: t=<unix time>,v1=<hex>`, written
from the docs' description (not from quickmig's signing code, so the tests check that code
against what a receiver in any language would do)."""
from __future__ import annotations

import hashlib
import hmac
import time


def valid(secret: bytes, header: str, body: bytes, max_age_s: float = 300) -> bool:
    """Whether `header` signs `body` with `secret`: HMAC-SHA256 over "<t>." and the body, the
    time within max_age_s of now."""
    sig = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        fresh = abs(time.time() - int(sig.get("t", 0))) < max_age_s
    except ValueError:
        return False
    want = hmac.new(secret, f"{sig.get('t')}.".encode() + body, hashlib.sha256).hexdigest()
    return fresh and hmac.compare_digest(want, sig.get("v1", ""))
