"""The states of a migration and the moves between them.

`rolling_back` is an active state of its own so that a crashed rollback is visible
and can be resumed, like any other phase.
"""
from workers.model.errors import QuickmigError

QUEUED = "queued"
SNAPSHOTTING = "snapshotting"
COPYING = "copying"
PREPARING = "preparing"
CUTTING_OVER = "cutting_over"
FINISHING = "finishing"
ROLLING_BACK = "rolling_back"
COMPLETED = "completed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"

ENDS = frozenset({COMPLETED, FAILED, ROLLED_BACK})

# The Hyper-V states of a VM quickmig moves: Running (a quick migration behind a checkpoint),
# Off and Saved (a cold move: nothing changes while it is copied, docs/design.md)
MOVABLE_VM_STATES = ("Running", "Off", "Saved")
COLD_VM_STATES = ("Off", "Saved")
ACTIVE = (QUEUED, SNAPSHOTTING, COPYING, PREPARING, CUTTING_OVER, FINISHING, ROLLING_BACK)

# Which phase (for timestamps and metrics) each working state belongs to.
PHASE_OF = {
    SNAPSHOTTING: "snapshot",
    COPYING: "copy",
    PREPARING: "prepare",
    CUTTING_OVER: "cutover",
    FINISHING: "finish",
    ROLLING_BACK: "rollback",
}

# Before the destination VM is verified running, every failure rolls back; after, the
# VM lives on the destination and a failure of cleanup is `failed`, never a rollback.
ALLOWED = {
    QUEUED: {SNAPSHOTTING, ROLLING_BACK, FAILED},
    SNAPSHOTTING: {COPYING, ROLLING_BACK},
    COPYING: {PREPARING, ROLLING_BACK},
    PREPARING: {CUTTING_OVER, ROLLING_BACK},
    CUTTING_OVER: {FINISHING, ROLLING_BACK},
    FINISHING: {COMPLETED, FAILED},
    ROLLING_BACK: {ROLLED_BACK, FAILED},
    COMPLETED: set(),
    FAILED: set(),
    ROLLED_BACK: set(),
}


class IllegalTransition(QuickmigError):
    pass


def check(src: str, dst: str) -> None:
    if dst not in ALLOWED.get(src, ()):
        raise IllegalTransition(f"cannot go from {src} to {dst}")
