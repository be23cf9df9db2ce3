"""The two barriers of a `together` group (docs/plans.md, "Groups that switch over together").

A member arrives at `prepared` once its gate passed and the destination validated it (the
VM still runs on the source), and at `imported` once it is ready to start (saved on the
source, its last bytes copied, imported on the destination, not started). Each arrival is
one atomic step in Redis: it records the member and says whether the group is still
waiting, whether this member was the last one in (it then sends the next step to the
others), or whether the group rolled back. A member that waits ends its task, so no
worker is held by a waiting member. Passing `imported` is the group's point of no return:
from then on an abort is refused (every member is told to start), before it an abort
makes every member roll back. A barrier not passed within its bound aborts the group.
"""
from __future__ import annotations

import dataclasses

import redis

from workers.coord import redis_lua
from workers.model import keys

_ARRIVE = redis_lua.load("group_arrive")
_ABORT = redis_lua.load("group_abort")

PREPARED, IMPORTED = "prepared", "imported"
# the field that says a barrier is passed, and the one its wait is counted from: the
# `prepared` wait from the first member in, the `imported` wait from the group's go (the
# first Save-VM can come no earlier)
_PASSED = {PREPARED: "go_at", IMPORTED: "start_at"}
_SINCE = {PREPARED: "first_prepared_at", IMPORTED: "go_at"}
TTL_S = 7 * 24 * 3600

WAIT, GO, LAST, ABORT = "wait", "go", "last", "abort"


@dataclasses.dataclass(frozen=True)
class Verdict:
    what: str          # wait, go, last or abort
    why: str = ""      # for abort: why the group rolls back


class GroupBarrier:
    def __init__(self, client: redis.Redis, plan_id: str, group: str, size: int):
        self.r, self.plan_id, self.group, self.size = client, plan_id, group, int(size)
        self.key = keys.group_barrier(plan_id, group)
        self._arrive = client.register_script(_ARRIVE)
        self._abort = client.register_script(_ABORT)

    def arrive(self, phase: str, member: str, bound_s: float) -> Verdict:
        what, why = self._arrive(keys=[self.key, keys.group_barrier(self.plan_id, self.group, phase)],
                                 args=[member, self.size, _PASSED[phase], _SINCE[phase], bound_s, TTL_S])
        return Verdict(str(what), str(why))

    def abort(self, why: str) -> int:
        """1: this call rolled the group back; 0: it was already; -1: past its point of no return."""
        return int(self._abort(keys=[self.key], args=[why, TTL_S]))

    def state(self) -> dict:
        """The group's hash (times as floats, `abort` the reason) and who arrived where."""
        with self.r.pipeline(transaction=False) as p:
            p.hgetall(self.key)
            p.smembers(keys.group_barrier(self.plan_id, self.group, PREPARED))
            p.smembers(keys.group_barrier(self.plan_id, self.group, IMPORTED))
            h, prepared, imported = p.execute()
        out: dict = {k: (v if k == "abort" else float(v)) for k, v in h.items()}
        out[PREPARED], out[IMPORTED] = sorted(prepared), sorted(imported)
        return out

    def overdue(self, now: float, prepared_bound_s: float, imported_bound_s: float) -> str | None:
        """Why the group waited too long at a barrier (None if it did not), from `state`."""
        st = self.state()
        if "abort" in st or "start_at" in st:
            return None
        if "go_at" in st and now - st["go_at"] > imported_bound_s:
            return (f"not every member was ready to start within {imported_bound_s:g} s of the group's go "
                    f"({len(st[IMPORTED])} of {self.size} were)")
        if "go_at" not in st and "first_prepared_at" in st and now - st["first_prepared_at"] > prepared_bound_s:
            return (f"not every member was ready to switch over within {prepared_bound_s:g} s of the first "
                    f"({len(st[PREPARED])} of {self.size} were)")
        return None
