"""The worker unit stops a pool the way its warm shutdown needs: SIGTERM to Celery's main
process only. tests/integration/test_chaos.py shows that this lets the cutover pool finish
the switchover it holds, and that SIGTERM to the whole process group (what
KillMode=control-group sends) cuts it short."""
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "quickmig-worker@.service"


def settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_stopping_a_pool_signals_its_main_process_only():
    unit = settings(UNIT.read_text())
    # mixed: SIGTERM to the main process, SIGKILL to what remains at the timeout
    assert unit["KillMode"] == "mixed"
    assert unit.get("KillSignal", "SIGTERM") == "SIGTERM"   # Celery's warm shutdown
    assert int(unit["TimeoutStopSec"]) >= 300
