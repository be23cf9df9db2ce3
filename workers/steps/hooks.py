"""A plan's hooks: the HTTP callouts a plan or group names around a member's cutover.

`pre_cutover` is called once the member's pre-copy gate has passed, in the copy step (the
copy pool: never the cutover pool, whose slots a switchover must find free, and never in
the downtime): the VM still runs on its source, untouched but for our checkpoint. A
failure to connect, an answer other than 2xx, or no answer within the hook's `timeout_s`
is a hard failure of the step: the VM rolls back before any downtime, and the record's
error names the hook and what came of it. A redelivered copy step runs the gate again and
calls again: the receiver answers for the VM as it is then.

`post_cutover` is called by the finish step, once the destination VM was verified running
(the cutover's heartbeat) and before the source is merged away or removed. Its failure is
recorded and the migration goes on (`on_hook_failure: continue`, the only choice: see
producer.plan_file). A finish step that is delivered again does not call a second time.

Each call POSTs `{"hook": KIND, "migration": <the record>}` signed as webhooks are
(workers.model.signed_post) with the secret the credentials file holds under
`[hooks.NAME]` (the record and the plan carry only NAME), read when the call is made.
Every call's outcome is appended to the record's `hook_calls` (`plan status` shows them).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from workers.engine import context
from workers.engine.step import HardFailure
from workers.model import signed_post
from workers.model.config import ConfigError

PRE, POST = "pre_cutover", "post_cutover"


def _secret(name: str) -> bytes | str:
    """The secret's bytes, or why there is none (words without the secret)."""
    cfg = context.config()
    try:
        found = cfg.hook_secrets()
    except ConfigError as e:
        return f"its secret cannot be read: {e}"
    if name not in found:
        return (f"no secret {name!r}: add [hooks.{name}] secret = \"...\" (or secret_file, or secret_env) "
                f"to the credentials file {cfg.credentials_file}")
    return found[name].encode()


def _post(url: str, body: bytes, secret: bytes, headers: dict[str, str],
          timeout_s: float) -> tuple[bool, int | None, str]:
    """The signed POST within `timeout_s` in all (urllib's own timeout is per socket operation:
    a receiver that answers a byte at a time would outlast it)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quickmig-hook")
    try:
        return pool.submit(signed_post.post, url, body, secret, headers, timeout_s).result(timeout=timeout_s)
    except FutureTimeout:
        return False, None, f"no answer within {timeout_s:g} s"
    finally:
        pool.shutdown(wait=False)


def call(mid: str, kind: str, lg) -> dict:
    """Call the record's `kind` hook once and record what came of it; returns that outcome."""
    store = context.store()
    rec = store.get(mid)
    hook = rec["hooks"][kind]
    t0 = time.time()
    secret = _secret(hook["secret"])
    if isinstance(secret, str):
        ok, status, outcome = False, None, secret
    else:
        body = json.dumps({"hook": kind, "migration": rec}, sort_keys=True).encode()
        headers = {"User-Agent": "quickmig-hooks", "Quickmig-Hook": kind, "Quickmig-Migration": mid}
        ok, status, outcome = _post(hook["url"], body, secret, headers, float(hook["timeout_s"]))
    done = {"hook": kind, "url": hook["url"], "at": round(t0, 3), "seconds": round(time.time() - t0, 3),
            "ok": ok, "status": status, "outcome": outcome}
    store.update(mid, lambda r: r.setdefault("hook_calls", []).append(done))
    (lg.info if ok else lg.warning)("%s hook %s: %s in %.2fs", kind, hook["url"], outcome, done["seconds"])
    return done


def pre_cutover(mid: str, lg) -> None:
    """Call the pre_cutover hook if there is one; HardFailure (roll back, no downtime yet) unless it said 2xx."""
    if PRE not in (context.store().get(mid).get("hooks") or {}):
        return
    done = call(mid, PRE, lg)
    if not done["ok"]:
        raise HardFailure(f"the pre_cutover hook {done['url']} did not agree ({done['outcome']}); "
                          "rolled back before any downtime, the VM still runs on the source")


def post_cutover(mid: str, lg) -> None:
    """Call the post_cutover hook if there is one and it was not called yet; its failure is
    recorded and the migration goes on (on_hook_failure continue)."""
    rec = context.store().get(mid)
    if POST not in (rec.get("hooks") or {}) or any(c["hook"] == POST for c in rec.get("hook_calls", [])):
        return
    call(mid, POST, lg)
