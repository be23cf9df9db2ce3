"""Finding a VM for a request: on its source host, else saying where it is instead.

The producer validates a request before it enqueues it, and that takes the hosts'
credentials. A producer that holds none (only the workers should hold them) sends
`lookup_vm` to the snapshot pool instead and waits for the answer on a Redis list of its
own (`keys.lookup_reply`): the VM's description, or the one line that refuses the request.
Neither carries a secret.
"""
from __future__ import annotations

import json

from workers.engine import context
from workers.engine.app import app
from workers.hyperv.vm_location import LookupRefused, find_vm
from workers.model import keys, routing


@app.task(name=routing.LOOKUP_VM, acks_late=False)
def lookup_vm(reply_key: str, vm: str, source: str) -> None:
    """Answer a producer's lookup on `reply_key`: {"vm": description} or {"error": line}."""
    cfg = context.config()
    try:
        answer: dict = {"vm": find_vm(cfg.hosts, context.driver, vm, source)}
    except LookupRefused as e:
        answer = {"error": str(e)}
    r = context.store().r
    with r.pipeline() as p:
        p.rpush(reply_key, json.dumps(answer))
        p.expire(reply_key, keys.LOOKUP_REPLY_TTL_S)
        p.execute()
