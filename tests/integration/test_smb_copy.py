"""The SMB copy engine against two real smbd on loopback."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from workers.model.chunks import digest_of_bytes, local_chunk_digests
from workers.smb import connections, files, verifier
from workers.smb.file_copy import (
    PARTIAL_SUFFIX,
    CopyVerificationError,
    SmbConnectionError,
    SmbEndpoint,
    SmbFileNotFoundError,
    SourceChangedError,
    copy_file,
    delete_file,
    exists,
    file_size,
    partial_name,
    sha256_of,
)
from workers.smb.files import MAX_CHUNK

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def put(share, rel: str, data: bytes) -> None:
    path = share.local(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_copies_a_40_mib_random_file_between_two_servers_byte_for_byte(smb_servers, smb_dir, record_property):
    src, dst = smb_servers
    data = os.urandom(40 * MiB + 12345)  # not a multiple of the chunk size
    put(src, rf"{smb_dir}\disk.vhdx", data)
    calls = []

    result = copy_file(src.endpoint, rf"{smb_dir}\disk.vhdx", dst.endpoint, rf"{smb_dir}\disk.vhdx",
                       progress=lambda done, total: calls.append((done, total)))

    assert dst.local(rf"{smb_dir}\disk.vhdx").read_bytes() == data
    assert result.bytes == len(data)
    assert result.digest == digest_of_bytes(data)
    assert calls and calls[-1] == (len(data), len(data))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert all(t == len(data) for _, t in calls)
    record_property("copy_mb_per_s", round(result.mb_per_s, 1))
    print(f"\n40 MiB copy: {result.seconds:.2f}s, {result.mb_per_s:.0f} MB/s (read + write + verify read-back)")


def test_reads_and_writes_in_requests_as_large_as_negotiated(smb_servers, smb_dir, monkeypatch):
    src, dst = smb_servers
    put(src, rf"{smb_dir}\big.bin", os.urandom(3 * MAX_CHUNK))
    # A fresh connection holds credits for one full-size request, and the pipeline sends the
    # next READ before the first answer grants more (it sends a smaller one rather than
    # wait): copy once untraced, so the connections hold what a running copy holds. Run
    # alone, without this, the test saw a 4 MiB READ; after the tests before it, it did not.
    copy_file(src.endpoint, rf"{smb_dir}\big.bin", dst.endpoint, rf"{smb_dir}\big.bin", streams=2)
    reads, writes = [], []
    real_read, real_write = files.send_read, files.send_write
    monkeypatch.setattr(files, "send_read",
                        lambda fh, off, want, into=None: reads.append(want) or real_read(fh, off, want, into))
    monkeypatch.setattr(files, "send_write",
                        lambda fh, off, data: writes.append(len(data)) or real_write(fh, off, data))

    copy_file(src.endpoint, rf"{smb_dir}\big.bin", dst.endpoint, rf"{smb_dir}\big.bin", streams=1)

    # one stream: 3 source reads + 3 read-back reads, each 8 MiB (Samba's max)
    assert reads == [MAX_CHUNK] * 6
    assert writes == [MAX_CHUNK] * 3
    reads.clear(), writes.clear()

    copy_file(src.endpoint, rf"{smb_dir}\big.bin", dst.endpoint, rf"{smb_dir}\big.bin", streams=2)

    # two streams: still the negotiated max (payloads are never copied, so memory is not what limits them)
    assert reads == [MAX_CHUNK] * 6
    assert writes == [MAX_CHUNK] * 3


def test_creates_nested_folders_and_keeps_names_with_spaces_and_non_ascii(smb_servers, smb_dir):
    src, dst = smb_servers
    data = os.urandom(3 * MiB + 7)
    src_rel = rf"{smb_dir}\Virtual Hard Disks\Prüfung VM\disk é 東京.vhdx"
    dst_rel = rf"{smb_dir}\Hyper-V\Virtual Hard Disks\Ünïcødé folder\disk é 東京 (copy).vhdx"
    put(src, src_rel, data)

    result = copy_file(src.endpoint, src_rel, dst.endpoint, dst_rel)

    assert dst.local(dst_rel).read_bytes() == data
    assert file_size(dst.endpoint, dst_rel) == len(data)
    assert sha256_of(dst.endpoint, dst_rel) == hashlib.sha256(data).hexdigest()
    assert result.digest == digest_of_bytes(data)


def test_copies_an_empty_file(smb_servers, smb_dir):
    src, dst = smb_servers
    put(src, rf"{smb_dir}\empty.vmgs", b"")

    result = copy_file(src.endpoint, rf"{smb_dir}\empty.vmgs", dst.endpoint, rf"{smb_dir}\empty.vmgs")

    assert dst.local(rf"{smb_dir}\empty.vmgs").read_bytes() == b""
    assert result.digest == hashlib.sha256(b"").hexdigest()


def test_never_leaves_the_partial_name_behind_on_success(smb_servers, smb_dir):
    src, dst = smb_servers
    rel = rf"{smb_dir}\Virtual Machines\vm.vmcx"
    put(src, rel, os.urandom(MiB))
    put(dst, partial_name(rel), b"stale partial file from an interrupted attempt, longer than nothing")
    put(dst, rel, b"an older copy that a redelivered task replaces")

    copy_file(src.endpoint, rel, dst.endpoint, rel)

    assert sorted(p.name for p in dst.local(rel).parent.iterdir()) == ["vm.vmcx"]
    assert dst.local(rel).read_bytes() == src.local(rel).read_bytes()
    assert not exists(dst.endpoint, partial_name(rel))


def host_hash(share, rel: str, calls: list | None = None):
    """What the driver's file_hash does on the destination host for a range: the SHA-256s of
    chunks of the landed partial file, computed there."""
    def dest_digests(first: int, count: int) -> list[str]:
        if calls is not None:
            calls.append((first, count))
        return local_chunk_digests(share.local(rel + PARTIAL_SUFFIX), first, count)
    return dest_digests


def test_a_hash_from_the_destination_host_verifies_a_multi_stream_copy(smb_servers, smb_dir):
    src, dst = smb_servers
    rel = rf"{smb_dir}\big.vhdx"
    data = os.urandom(5 * 8 * MiB + 999)  # 6 chunks over 3 streams: they finish out of order
    put(src, rel, data)
    calls: list = []

    result = copy_file(src.endpoint, rel, dst.endpoint, rel, streams=3, dest_digests=host_hash(dst, rel, calls))

    assert calls == [(0, 6)]  # six chunks are fewer than a verifier's range: checked at the end, at once
    assert dst.local(rel).read_bytes() == data
    assert result.digest == digest_of_bytes(data)


def test_the_destination_host_checks_landed_chunks_while_the_copy_goes_on(smb_servers, smb_dir, monkeypatch):
    monkeypatch.setattr(verifier, "MIN_RANGE", 2)
    src, dst = smb_servers
    rel = rf"{smb_dir}\checked-early.vhdx"
    data = os.urandom(6 * 8 * MiB - 5)
    put(src, rel, data)
    done, calls = [0], []
    host = host_hash(dst, rel)

    def dest_digests(first, count):
        calls.append((first, count, done[0]))
        return host(first, count)

    result = copy_file(src.endpoint, rel, dst.endpoint, rel, streams=1, dest_digests=dest_digests,
                       progress=lambda d, t: done.__setitem__(0, d), throttle=lambda n: time.sleep(0.05))

    assert result.digest == digest_of_bytes(data) and dst.local(rel).read_bytes() == data
    ranges = [(first, count) for first, count, _ in calls]
    assert [f for f, _ in ranges] == [0] + [f + c for f, c in ranges[:-1]]  # in order, each chunk once
    assert sum(c for _, c in ranges) == 6
    assert calls[0][2] < len(data)  # the first range was checked before the copy had landed it all
    assert ranges[-1][0] + ranges[-1][1] == 6 and all(f + c < 6 for f, c in ranges[:-1])  # last chunk last


def test_a_bad_chunk_the_host_finds_stops_the_copy_before_it_ends(smb_servers, smb_dir, monkeypatch):
    monkeypatch.setattr(verifier, "MIN_RANGE", 1)
    src, dst = smb_servers
    rel = rf"{smb_dir}\bad-early.vhdx"
    put(src, rel, os.urandom(6 * 8 * MiB))
    real_write = files.send_write

    def flip_in_chunk_zero(fh, offset, data):
        if offset == 0:
            data = bytearray(data)
            data[7] ^= 0x10
        return real_write(fh, offset, bytes(data))

    monkeypatch.setattr(files, "send_write", flip_in_chunk_zero)
    reads = []

    with pytest.raises(CopyVerificationError, match=r"bad-early.vhdx: chunk 0 \(bytes 0..8388608\) that landed"):
        copy_file(src.endpoint, rel, dst.endpoint, rel, streams=1, dest_digests=host_hash(dst, rel),
                  throttle=lambda n: reads.append(n) or time.sleep(0.3))

    assert len(reads) < 6  # stopped: the later chunks were never read
    assert not dst.local(rel).exists() and not dst.local(rel + PARTIAL_SUFFIX).exists()


@pytest.mark.parametrize("verify", ["readback", "host"])
def test_a_corrupted_landing_raises_verification_error_and_leaves_no_file(smb_servers, smb_dir, monkeypatch, verify):
    src, dst = smb_servers
    rel = rf"{smb_dir}\disk-{verify}.avhdx"
    put(src, rel, os.urandom(5 * MiB))
    real_write = files.send_write

    def flip_one_byte(fh, offset, data):
        if offset == 0:
            data = bytearray(data)
            data[1234] ^= 0x01
            data = bytes(data)
        return real_write(fh, offset, data)

    monkeypatch.setattr(files, "send_write", flip_one_byte)

    with pytest.raises(CopyVerificationError) as err:
        copy_file(src.endpoint, rel, dst.endpoint, rel,
                  dest_digests=host_hash(dst, rel) if verify == "host" else None)

    assert f"disk-{verify}.avhdx" in str(err.value)
    assert not dst.local(rel).exists()
    assert not dst.local(rel + PARTIAL_SUFFIX).exists()
    assert not exists(dst.endpoint, rel)


def test_a_source_that_grows_during_the_copy_raises_source_changed(smb_servers, smb_dir, monkeypatch):
    src, dst = smb_servers
    rel = rf"{smb_dir}\active.avhdx"
    put(src, rel, os.urandom(2 * MAX_CHUNK))
    real_read = files.recv_read
    grown = []

    def read_then_grow(fh, req):
        data = real_read(fh, req)
        if not grown:  # a guest write lands right after the first chunk was read
            with open(src.local(rel), "ab") as f:
                f.write(b"new guest write")
            grown.append(True)
        return data

    monkeypatch.setattr(files, "recv_read", read_then_grow)

    with pytest.raises(SourceChangedError) as err:
        copy_file(src.endpoint, rel, dst.endpoint, rel)

    assert "active.avhdx" in str(err.value)
    assert not dst.local(rel).exists()
    assert not dst.local(rel + PARTIAL_SUFFIX).exists()


def test_a_missing_source_is_reported_by_its_path(smb_servers, smb_dir):
    src, dst = smb_servers

    with pytest.raises(SmbFileNotFoundError) as err:
        copy_file(src.endpoint, rf"{smb_dir}\no such.vhdx", dst.endpoint, rf"{smb_dir}\x.vhdx")

    assert "no such.vhdx" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert not dst.local(rf"{smb_dir}\x.vhdx").exists()


def test_a_refused_connection_is_a_retryable_error(smb_servers):
    from lab.ports import free_port

    src, _ = smb_servers
    nobody = SmbEndpoint("127.0.0.1", free_port(), "vms", src.endpoint.username, src.endpoint.password)

    with pytest.raises(SmbConnectionError) as err:
        file_size(nobody, "x.vhdx")

    assert err.value.retryable


def test_file_helpers_size_exists_sha256_and_delete(smb_servers, smb_dir):
    src, _ = smb_servers
    rel = rf"{smb_dir}\iso\install media.iso"
    data = os.urandom(MiB + 1)
    put(src, rel, data)

    assert exists(src.endpoint, rel) and exists(src.endpoint, smb_dir)
    assert file_size(src.endpoint, rel) == len(data)
    assert sha256_of(src.endpoint, rel) == hashlib.sha256(data).hexdigest()
    delete_file(src.endpoint, rel)
    delete_file(src.endpoint, rel)  # already gone: no error
    assert not exists(src.endpoint, rel)
    assert not src.local(rel).exists()


def test_the_endpoint_repr_hides_the_password(smb_servers):
    ep = smb_servers[0].endpoint
    assert ep.password not in repr(ep) and ep.password not in str(ep)


def test_a_forked_process_gets_its_own_connections_and_leaves_the_parents_alone(smb_servers, smb_dir):
    src, dst = smb_servers
    rel = rf"{smb_dir}\fork.vhdx"
    data = os.urandom(2 * MiB)
    put(src, rel, data)
    copy_file(src.endpoint, rel, dst.endpoint, rel)  # fills this process's cache
    parent_tree = connections.tree(src.endpoint)
    assert connections.connection_count() >= 2

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any pytest teardown
        report = {}
        try:
            report["inherited"] = connections.connection_count()
            connections.reset_connections()  # what worker_process_init calls; must be harmless
            result = copy_file(src.endpoint, rel, dst.endpoint, rel + ".child")
            report["digest"] = result.digest
            report["own_tree"] = connections.tree(src.endpoint) is not parent_tree
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            report["error"] = repr(e)
        finally:
            os.write(w, json.dumps(report).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)

    assert "error" not in report, report["error"]
    assert report["inherited"] == 0
    assert report["own_tree"] is True
    assert report["digest"] == digest_of_bytes(data)
    # the parent's cached connection survived the child's exit and still works, unchanged
    assert connections.tree(src.endpoint) is parent_tree
    assert sha256_of(src.endpoint, rel) == hashlib.sha256(data).hexdigest()
    assert connections.tree(src.endpoint) is parent_tree


def test_warm_opens_a_lanes_streams_ahead_and_copies_on_other_lanes_run_side_by_side(smb_servers, smb_dir):
    """What the downtime copy relies on: `warm` opens every stream's connection before the
    copy that uses them (which then opens none), and copies on different lanes of the same
    share never share a connection, so they can run at the same time."""
    import dataclasses
    import threading

    src, dst = smb_servers
    connections.reset_connections()
    lanes = [(dataclasses.replace(src.endpoint, lane=n), dataclasses.replace(dst.endpoint, lane=n)) for n in (0, 1)]
    for s, d in lanes:
        connections.warm(s, 3)
        connections.warm(d, 3)
    assert connections.connection_count() == 12
    assert connections.tree(lanes[0][0], 2) is not connections.tree(lanes[1][0], 2)
    blobs = {n: os.urandom(3 * 8 * MiB - 5) for n in (0, 1)}  # three chunks: three streams each
    for n, data in blobs.items():
        put(src, rf"{smb_dir}\lane{n}.bin", data)
    results, errors = {}, []

    def run(n: int) -> None:
        try:
            s, d = lanes[n]
            results[n] = copy_file(s, rf"{smb_dir}\lane{n}.bin", d, rf"{smb_dir}\lane{n}.bin", streams=3)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors, errors
    assert connections.connection_count() == 12  # nothing opened during the copies
    for n, data in blobs.items():
        assert results[n].streams == 3 and results[n].digest == digest_of_bytes(data)
        assert dst.local(rf"{smb_dir}\lane{n}.bin").read_bytes() == data
    connections.reset_connections()
