"""Where a VM is: on the host a request names as its source, else which hosts have it.

Used by the producer (when its config holds the hosts' credentials) and by the workers'
`lookup_vm` task (workers.steps.lookup) for a producer that holds none.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from workers.hyperv.driver import HyperVDriver
from workers.hyperv.errors import HyperVError, VMNotFound
from workers.model.errors import QuickmigError


class LookupRefused(QuickmigError):
    """The VM is not where the request says, or its host cannot be asked: the message says which."""


def find_vm(hosts: Iterable[str], driver: Callable[[str], HyperVDriver], vm: str, source: str) -> dict:
    """The description (describe_vm) of `vm` on `source`; LookupRefused naming the hosts it is
    on instead, or saying no host has it."""
    try:
        return driver(source).run("describe_vm", {"name": vm})["vm"]
    except VMNotFound:
        pass
    except HyperVError as e:
        raise LookupRefused(f"cannot look up {vm!r} on {source}: {e}") from None
    elsewhere = []
    for host in hosts:
        if host == source:
            continue
        try:
            driver(host).run("describe_vm", {"name": vm})
            elsewhere.append(host)
        except HyperVError:
            continue
    if elsewhere:
        raise LookupRefused(f"VM {vm!r} is not on {source}; it is on {', '.join(elsewhere)}")
    raise LookupRefused(f"unknown VM {vm!r}: no host in the inventory has a VM of that name")
