"""The verifier that checks landed chunks against the destination host's digests while the
copy goes on (workers.smb.verifier), driven chunk by chunk without SMB."""
import threading
import time

import pytest

from workers.model import chunks
from workers.smb import verifier
from workers.smb.errors import CopyVerificationError
from workers.smb.verifier import Verifier


def digest(i: int) -> str:
    return f"{i:064x}"


class Host:
    """The destination host: answers ranges from what it has, and remembers the calls."""

    def __init__(self, have: dict[int, str]):
        self.have, self.calls = have, []

    def __call__(self, first: int, count: int) -> list[str]:
        self.calls.append((first, count))
        return [self.have[i] for i in range(first, first + count) if i in self.have]


def start(v: Verifier):
    errors: list = []

    def run():
        try:
            v.run()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def land(v: Verifier, digests: dict, host: Host, indices, good: bool = True) -> None:
    for i in indices:
        host.have[i] = digest(i) if good else "f" * 64
        digests[i] = digest(i)
        v.landed()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_landed_chunks_are_checked_in_ranges_while_copying_and_the_last_one_after_finish(monkeypatch):
    monkeypatch.setattr(verifier, "MIN_RANGE", 3)
    n, digests, host, flushed_at = 10, {}, Host({}), []
    v = Verifier(host, digests, n, threading.Event(), lambda i: f"chunk {i}",
                 between=lambda: flushed_at.append(v.checked))
    t, errors = start(v)

    land(v, digests, host, [0, 1])
    land(v, digests, host, [3, 4])  # out of order: 2 missing, so nothing is ready yet
    time.sleep(0.1)
    assert host.calls == []
    land(v, digests, host, [2])
    wait_for(lambda: v.checked == 5)
    assert host.calls == [(0, 5)]
    land(v, digests, host, range(5, 10))
    wait_for(lambda: v.checked == 9)
    time.sleep(0.1)
    assert v.checked == 9 and not v.complete  # the last chunk waits for the file's final size
    v.finish()
    t.join(5)
    assert not errors and v.complete
    assert host.calls == [(0, 5), (5, 4), (9, 1)]
    assert flushed_at == [5, 9]  # between ranges while copying, not after the last one


def test_a_range_is_at_most_max_range_chunks(monkeypatch):
    monkeypatch.setattr(chunks, "MAX_RANGE", 4)
    n, digests, host = 11, {}, Host({})
    v = Verifier(host, digests, n, threading.Event(), lambda i: f"chunk {i}")
    land(v, digests, host, range(n))
    v.finish()
    v.run()
    assert host.calls == [(0, 4), (4, 4), (8, 3)] and v.complete


def test_a_chunk_that_differs_on_the_host_is_a_verification_error_naming_it():
    n, digests, host, stop = 4, {}, Host({}), threading.Event()
    v = Verifier(host, digests, n, stop, lambda i: f"disk.vhdx: chunk {i}")
    land(v, digests, host, [0, 1, 3])
    land(v, digests, host, [2], good=False)
    v.finish()
    with pytest.raises(CopyVerificationError, match=r"disk.vhdx: chunk 2 that landed hashes f{64}"):
        v.run()
    assert not v.complete
    assert stop.is_set()  # the streams stop too


def test_a_host_that_has_fewer_chunks_than_landed_is_a_verification_error():
    n, digests, host = 3, {}, Host({})
    v = Verifier(host, digests, n, threading.Event(), lambda i: f"chunk {i}")
    land(v, digests, host, range(n))
    del host.have[2]
    v.finish()
    with pytest.raises(CopyVerificationError, match="chunk 2: the destination host has no such chunk"):
        v.run()


def test_stop_ends_a_waiting_verifier_without_error_and_incomplete():
    stop, digests, host = threading.Event(), {}, Host({})
    v = Verifier(host, digests, 50, stop, lambda i: f"chunk {i}")
    t, errors = start(v)
    land(v, digests, host, [0])
    stop.set()
    t.join(5)
    assert not t.is_alive() and not errors and not v.complete and host.calls == []


def test_an_empty_file_is_complete_at_once():
    v = Verifier(Host({}), {}, 0, threading.Event(), lambda i: f"chunk {i}")
    v.run()
    assert v.complete
