"""The copy engine's pure parts: chunk layout and digest, rates, progress figures, slot audit."""
import hashlib
import os
import time

import pytest

from workers.coord.progress import CopyProgress
from workers.coord.slots import max_concurrency
from workers.coord.throttle import ThrottleError, parse_rate
from workers.model import chunks

C = chunks.CHUNK_BYTES


def test_chunks_cover_the_file_exactly_once_and_the_last_one_is_short():
    size = 3 * C + 5
    spans = [chunks.span(i, size) for i in range(chunks.count(size))]
    assert spans == [(0, C), (C, C), (2 * C, C), (3 * C, 5)]
    assert chunks.count(0) == 0 and chunks.count(C) == 1 and chunks.count(C + 1) == 2


def test_the_digest_is_the_sha256_of_the_chunk_digests_in_order():
    data = bytes(range(256)) * (C // 256) + b"tail"
    parts = [hashlib.sha256(data[:C]).digest(), hashlib.sha256(data[C:]).digest()]
    assert chunks.digest_of_bytes(data) == hashlib.sha256(b"".join(parts)).hexdigest()
    assert chunks.digest_of_bytes(b"") == hashlib.sha256(b"").hexdigest()
    swapped = data[C:] + data[:C]
    assert chunks.digest_of_bytes(swapped) != chunks.digest_of_bytes(data)


@pytest.mark.parametrize("size", [0, 1, chunks.PIECE_BYTES + 3, C - 1, C, C + 1, 2 * C + C // 2])
def test_a_local_file_digest_reads_in_pieces_and_agrees_with_the_digest_of_its_bytes(tmp_path, size):
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert chunks.digest_of_local(path) == chunks.digest_of_bytes(data)
    assert chunks.digest_of_local(path, "sha256") == hashlib.sha256(data).hexdigest()


def test_local_chunk_digests_of_a_range_are_those_chunks_and_stop_at_the_end(tmp_path):
    data = os.urandom(3 * C + 77)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    each = [hashlib.sha256(data[o:o + C]).hexdigest() for o in range(0, len(data), C)]
    assert chunks.local_chunk_digests(path) == each
    assert chunks.local_chunk_digests(path, 1, 2) == each[1:3]
    assert chunks.local_chunk_digests(path, 2, 10) == each[2:]
    assert chunks.local_chunk_digests(path, 4, 1) == []
    with pytest.raises(ValueError, match="whole numbers"):
        chunks.local_chunk_digests(path, -1, 1)


def test_a_local_file_digest_refuses_an_unknown_scheme(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown digest scheme"):
        chunks.digest_of_local(tmp_path / "f", "md5")


@pytest.mark.parametrize("text,value", [("125000000", 125_000_000), ("125M", 125_000_000), ("1.5G", 1_500_000_000),
                                        ("64k", 64_000), ("0", 0), ("10MB/s", 10_000_000)])
def test_rates_read_with_decimal_suffixes(text, value):
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["fast", "-1", "", "1T", "nan"])
def test_nonsense_rates_are_refused(text):
    with pytest.raises(ThrottleError):
        parse_rate(text)


def test_progress_gives_rate_and_eta_from_recent_samples():
    p = CopyProgress(store=None, mid="m", state="copying")
    p.base, p.file, p.file_done = 100, "f", 0
    first = p.snapshot(1100)
    assert first["rate_bps"] is None and first["eta_seconds"] is None  # no rate yet
    time.sleep(0.5)
    p.file_done = 500
    snap = p.snapshot(1100)
    assert snap["bytes_done"] == 600 and snap["bytes_total"] == 1100 and snap["file"] == "f"
    assert 500 <= snap["rate_bps"] <= 1100
    assert snap["eta_seconds"] == pytest.approx(500 / snap["rate_bps"], abs=0.1)
    assert set(snap) == {"file", "bytes_done", "bytes_total", "rate_bps", "eta_seconds", "at"}


def test_slot_audit_counts_overlaps_per_host_and_direction():
    ev = lambda e, h, at, r="a", w="b": {"event": e, "holder": h, "at": at, "read": r, "write": w}  # noqa: E731
    log = [ev("acquire", "1", 1), ev("acquire", "2", 2), ev("release", "1", 3), ev("acquire", "3", 3),
           ev("acquire", "4", 4, w="c"), ev("release", "2", 5), ev("release", "3", 6), ev("release", "4", 7)]
    peak = max_concurrency(log)
    assert peak[("read", "a")] == 3  # 2, 3, 4 at t=4
    assert peak[("write", "b")] == 2
    assert peak[("write", "c")] == 1


@pytest.mark.parametrize("dialect,algorithm", [("SMB_3_1_1", "AES_GMAC"), ("SMB_3_1_1", "AES_CMAC"),
                                               ("SMB_3_0_2", None), ("SMB_2_1_0", None)])
def test_signatures_without_a_copy_equal_smbprotocols(dialect, algorithm):
    import os

    import smbprotocol.connection as sc

    from workers.smb import wire

    ours, theirs = object.__new__(wire.Connection), object.__new__(sc.Connection)
    for c in (ours, theirs):
        c.dialect = getattr(sc.Dialects, dialect)
        c.signing_algorithm_id = None if algorithm is None else getattr(sc.SigningAlgorithms, algorithm)
    msg, key = os.urandom(100_000), os.urandom(16)
    for response in (False, True):
        for command in (sc.Commands.SMB2_WRITE, sc.Commands.SMB2_CANCEL):
            want = theirs._generate_signature(msg, key, 77, response, command)
            assert ours._generate_signature(bytearray(msg), key, 77, response, command) == want
    flipped = bytes([msg[0] ^ 1]) + msg[1:]
    assert ours._generate_signature(flipped, key, 77, False, sc.Commands.SMB2_WRITE) != \
        theirs._generate_signature(msg, key, 77, False, sc.Commands.SMB2_WRITE)


def test_the_wire_module_refuses_an_smbprotocol_it_was_not_written_for():
    import subprocess
    import sys
    child = ("import importlib.metadata as m\n"
             "real = m.version\n"
             "m.version = lambda name: '1.18.0' if name == 'smbprotocol' else real(name)\n"
             "import workers.smb.wire\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "1.17.0" in out.stderr and "1.18.0" in out.stderr
