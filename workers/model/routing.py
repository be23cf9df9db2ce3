"""Names of the tasks, the queue each goes on, and the step that carries a migration on
from each state.

No Celery here: the producer sends tasks by these names, the fleet metrics read the
queues' lengths, the reconciler re-sends a stuck migration's step, and the Celery app
(`workers.engine.app`) routes by them, all from one list.

One queue and one worker pool per kind of work: control steps (snapshot, prepare,
finish) are short WinRM calls; copies may take hours and go alone on `copy`; whatever
holds a VM down (cutover, and the rollback that may have to bring it back) has a pool of
its own, so a backlog of long copies never delays a switchover.
"""
from __future__ import annotations

from workers.model import states

SNAPSHOT = "quickmig.snapshot"
COPY = "quickmig.copy"
PREPARE = "quickmig.prepare"
CUTOVER = "quickmig.cutover"
FINISH = "quickmig.finish"
ROLLBACK = "quickmig.rollback"
RECONCILE = "quickmig.reconcile"
SWEEP_ORPHANS = "quickmig.sweep_orphans"
REAP_KEPT_SOURCES = "quickmig.reap_kept_sources"
LOOKUP_VM = "quickmig.lookup_vm"  # a producer without host credentials asks a worker

PREFIX = "quickmig."

QUEUE_SNAPSHOT, QUEUE_COPY, QUEUE_CUTOVER = "snapshot", "copy", "cutover"
QUEUES = (QUEUE_SNAPSHOT, QUEUE_COPY, QUEUE_CUTOVER)

ROUTES = {
    SNAPSHOT: QUEUE_SNAPSHOT,
    PREPARE: QUEUE_SNAPSHOT,
    FINISH: QUEUE_SNAPSHOT,
    COPY: QUEUE_COPY,
    CUTOVER: QUEUE_CUTOVER,
    ROLLBACK: QUEUE_CUTOVER,
    RECONCILE: QUEUE_SNAPSHOT,
    # not the cutover pool, whose slots a switchover must find free
    SWEEP_ORPHANS: QUEUE_SNAPSHOT,
    REAP_KEPT_SOURCES: QUEUE_SNAPSHOT,
    LOOKUP_VM: QUEUE_SNAPSHOT,
}

# The task that carries a migration forward from each active state (the reconciler re-sends it).
STEP_OF = {
    states.QUEUED: SNAPSHOT,
    states.SNAPSHOTTING: SNAPSHOT,
    states.COPYING: COPY,
    states.PREPARING: PREPARE,
    states.CUTTING_OVER: CUTOVER,
    states.FINISHING: FINISH,
    states.ROLLING_BACK: ROLLBACK,
}


def short(task_name: str) -> str:
    """The step's name in logs and metrics labels: quickmig.copy -> copy."""
    return task_name.removeprefix(PREFIX)
