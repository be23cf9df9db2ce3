"""Fault injection for tests: make the next runs of an operation fail, wait, or lose their answer.

A rule is `{"op": "save_vm" | "*", "action": "fail"|"delay"|"drop", "seconds": float,
"message": str, "times": int}`:

- fail:  the operation is not carried out; it exits 1 with a CLIXML error carrying
         `message` (category NotSpecified, FQID `QuickmigInjectedFault`).
- delay: sleep `seconds` first, then carry the operation out normally (a client whose
         OperationTimeout is shorter sees Receive time-out faults meanwhile).
- drop:  the operation IS carried out, but the HTTP request that would deliver its result
         (the Receive) is answered by closing the connection: the client never learns
         the outcome, which is how a redelivered task meets an operation that already ran.

`times` is how many runs the rule applies to (default 1; 0 or negative = until cleared).
Rules for an op are used in the order they were added; "*" matches every op.

A rule for `<op>:<step>` (e.g. `compare_vm:DestroySystem`) with action "fail" makes that one
step inside the operation fail the way its cmdlet or WMI method would, and the operation
goes on as its script does after such a failure. "*" never matches a step.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("lab.emulator.faults")

ACTIONS = ("fail", "delay", "drop")


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    op: str
    action: str
    seconds: float = 0.0
    message: str = ""
    times: int = 1  # remaining; <= 0 means unlimited

    def describe(self) -> dict:
        return asdict(self)


def parse_fault(doc: object) -> Fault:
    if not isinstance(doc, dict):
        raise FaultSpecError("a fault is a JSON object")
    unknown = set(doc) - {"op", "action", "seconds", "message", "times"}
    if unknown:
        raise FaultSpecError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    op = doc.get("op")
    action = doc.get("action")
    if not isinstance(op, str) or not op or len(op) > 64:
        raise FaultSpecError("fault needs 'op' (an operation name or '*')")
    if action not in ACTIONS:
        raise FaultSpecError(f"fault 'action' must be one of {', '.join(ACTIONS)}")
    seconds = doc.get("seconds", 0.0)
    times = doc.get("times", 1)
    message = doc.get("message", "")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise FaultSpecError("fault 'seconds' must be a number between 0 and 3600")
    if isinstance(times, bool) or not isinstance(times, int):
        raise FaultSpecError("fault 'times' must be an integer")
    if not isinstance(message, str):
        raise FaultSpecError("fault 'message' must be a string")
    if action == "fail" and not message:
        message = f"Injected fault: the operation '{op}' failed."
    return Fault(op=op, action=action, seconds=float(seconds), message=message, times=times)


class FaultTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._rules.append(fault)

    def clear(self) -> int:
        with self._lock:
            n = len(self._rules)
            self._rules.clear()
            return n

    def list(self) -> list[dict]:
        with self._lock:
            return [f.describe() for f in self._rules]

    def take_step(self, op: str, step: str) -> Fault | None:
        """The rule for `<op>:<step>` that applies now (consuming one of its `times`), if any."""
        name = f"{op}:{step}"
        return self._consume(name, lambda rule: rule == name)

    def take(self, op: str) -> Fault | None:
        """The rule that applies to this run of `op` (consuming one of its `times`), if any."""
        return self._consume(op, lambda rule: rule in (op, "*"))

    def take_delayed(self, op: str) -> Fault | None:
        """`take(op)`, logged, with a delay already waited out: what is left for the caller is
        to fail or drop the run as the fault says."""
        fault = self.take(op)
        if fault is not None:
            log.warning("fault injection: %s %s (%.1fs)", fault.action, op, fault.seconds)
            if fault.action == "delay":
                time.sleep(fault.seconds)
        return fault

    def _consume(self, name: str, matches) -> Fault | None:
        """The first rule whose op `matches`, one of its `times` used up (gone after its last)."""
        with self._lock:
            for i, f in enumerate(self._rules):
                if matches(f.op):
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            del self._rules[i]
                    return Fault(op=name, action=f.action, seconds=f.seconds, message=f.message, times=1)
            return None
