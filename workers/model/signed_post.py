"""A signed HTTP POST: how quickmig speaks to a receiver of its own choosing (webhooks,
producer.webhooks; a plan's hooks, workers.steps.hooks), so both sign the same way.

The header `Quickmig-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of the secret over "<t>."
followed by the body>` lets the receiver check that the body came from a holder of the
secret and is recent: it recomputes the HMAC, compares in constant time, and refuses a
timestamp far from its clock (a replay).
"""
from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request

SIGNATURE_HEADER = "Quickmig-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The Quickmig-Signature header: the time and the HMAC-SHA256 over "<time>." and the body."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def post(url: str, body: bytes, secret: bytes, headers: dict[str, str],
         timeout_s: float) -> tuple[bool, int | None, str]:
    """One signed POST of a JSON body: (accepted: a 2xx answer, the HTTP status or None, what
    came of it in words). The answer's body is not read: it is the receiver's, and may hold
    anything."""
    sent = {"Content-Type": "application/json", **headers, SIGNATURE_HEADER: sign(secret, int(time.time()), body)}
    req = urllib.request.Request(url, data=body, headers=sent, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as res:
            return 200 <= res.status < 300, res.status, f"HTTP {res.status}"
    except urllib.error.HTTPError as e:
        return False, e.code, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return False, None, f"not delivered: {reason}"
