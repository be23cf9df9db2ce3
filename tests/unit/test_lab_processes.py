"""lab/processes.py: stopping process groups (real processes, no lab)."""
import time

from lab import processes

# a process that takes SIGTERM as a request it never honours, as a worker busy with a long
# task does until its warm shutdown ends; it notes that the request came
STUBBORN = ["sh", "-c", 'trap "echo term >> $0.term" TERM; while :; do sleep 0.1; done']


def test_stop_all_signals_every_group_first_and_kills_them_by_one_shared_deadline(tmp_path):
    entries = []
    for i in range(4):
        argv = [*STUBBORN, str(tmp_path / f"p{i}")]
        entries.append(processes.spawn(argv, tmp_path / f"p{i}.log"))
    time.sleep(0.3)  # the traps are set
    assert all(processes.alive(e) for e in entries)
    t0 = time.monotonic()
    processes.stop_all(entries, timeout_s=2.0)
    took = time.monotonic() - t0
    assert not any(processes.alive(e) for e in entries)
    assert all((tmp_path / f"p{i}.term").read_text() == "term\n" for i in range(4))  # asked first, once
    # one after the other, four would take four deadlines (8 s)
    assert took < 4.0, took


def test_stopping_what_is_already_gone_is_quiet(tmp_path):
    entry = processes.spawn(["true"], tmp_path / "t.log")
    time.sleep(0.3)
    processes.stop_all([entry, entry], timeout_s=1.0)
    processes.stop(entry)
    assert not processes.alive(entry)
