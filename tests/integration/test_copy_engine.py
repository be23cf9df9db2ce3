"""The parallel, resumable copy engine against two real smbd on loopback."""
from __future__ import annotations

import os

import pytest

from workers.model import chunks
from workers.smb import files
from workers.smb.file_copy import CopyVerificationError, SourceChangedError, copy_file, exists, partial_name
from workers.smb.resume import MemoryResumeRecord

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
CHUNK = chunks.CHUNK_BYTES


def put(share, rel: str, data: bytes) -> None:
    path = share.local(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Interrupt(Exception):
    pass


def test_four_streams_copy_disjoint_chunks_and_the_digest_is_the_chunk_scheme(smb_servers, smb_dir):
    src, dst = smb_servers
    data = os.urandom(5 * CHUNK + 777)
    rel = rf"{smb_dir}\disk.vhdx"
    put(src, rel, data)
    cp = MemoryResumeRecord()

    res = copy_file(src.endpoint, rel, dst.endpoint, rel, streams=4, resume=cp)

    assert dst.local(rel).read_bytes() == data
    assert res.streams == 4
    assert res.digest == chunks.digest_of_bytes(data)
    assert res.bytes_written == len(data) and res.bytes_reused == 0
    assert cp.bytes_sent() == 0  # cleared once the copy is final


def test_an_interrupted_copy_resumes_and_recopies_at_most_one_chunk_per_stream(smb_servers, smb_dir):
    src, dst = smb_servers
    data = os.urandom(10 * CHUNK + 5)
    rel = rf"{smb_dir}\base.vhdx"
    put(src, rel, data)
    cp = MemoryResumeRecord()
    asked = []

    def die_after_six_chunks(n):
        asked.append(n)
        if len(asked) > 6:
            raise Interrupt("worker lost")

    with pytest.raises(Interrupt):
        copy_file(src.endpoint, rel, dst.endpoint, rel, streams=2, throttle=die_after_six_chunks, resume=cp)
    assert not dst.local(rel).exists() and dst.local(rel + ".partial").exists()
    done_before = len(cp.chunks)
    assert 4 <= done_before <= 6

    res = copy_file(src.endpoint, rel, dst.endpoint, rel, streams=2, resume=cp)

    assert dst.local(rel).read_bytes() == data
    assert res.digest == chunks.digest_of_bytes(data)
    assert res.bytes_reused == done_before * CHUNK
    assert res.bytes_written == len(data) - res.bytes_reused
    assert not dst.local(rel + ".partial").exists()


def test_a_checkpoint_from_another_source_version_starts_over(smb_servers, smb_dir):
    src, dst = smb_servers
    rel = rf"{smb_dir}\iso.iso"
    put(src, rel, os.urandom(3 * CHUNK))
    cp = MemoryResumeRecord()
    cp.load({"size": 3 * CHUNK, "last_write": 1, "change": 1})
    cp.record(0, "00" * 32)  # a chunk of a source that no longer exists

    res = copy_file(src.endpoint, rel, dst.endpoint, rel, resume=cp)

    assert res.bytes_reused == 0 and res.bytes_written == 3 * CHUNK
    assert dst.local(rel).read_bytes() == src.local(rel).read_bytes()


def test_a_same_size_rewrite_of_the_source_during_the_copy_fails_the_copy(smb_servers, smb_dir, monkeypatch):
    src, dst = smb_servers
    rel = rf"{smb_dir}\parent.vhdx"
    put(src, rel, os.urandom(3 * CHUNK))
    real_read = files.recv_read
    wrote = []

    def read_then_rewrite(fh, req):
        data = real_read(fh, req)
        if not wrote:  # a writer that should not exist touches the frozen disk, same size
            with open(src.local(rel), "r+b") as f:
                f.seek(CHUNK * 2 + 10)
                f.write(b"guest write")
            wrote.append(True)
        return data

    monkeypatch.setattr(files, "recv_read", read_then_rewrite)

    with pytest.raises(SourceChangedError) as err:
        copy_file(src.endpoint, rel, dst.endpoint, rel, streams=1)

    assert "parent.vhdx" in str(err.value) and "frozen" in str(err.value)
    assert not dst.local(rel).exists()
    assert not exists(dst.endpoint, partial_name(rel))


def test_verification_names_the_chunk_that_landed_wrong(smb_servers, smb_dir, monkeypatch):
    src, dst = smb_servers
    rel = rf"{smb_dir}\bad.vhdx"
    put(src, rel, os.urandom(3 * CHUNK))
    real_write = files.send_write

    def flip_in_chunk_two(fh, offset, data):
        if offset == 2 * CHUNK:
            data = bytearray(data)
            data[99] ^= 0x80
            data = bytes(data)
        return real_write(fh, offset, data)

    monkeypatch.setattr(files, "send_write", flip_in_chunk_two)
    cp = MemoryResumeRecord()

    with pytest.raises(CopyVerificationError) as err:
        copy_file(src.endpoint, rel, dst.endpoint, rel, streams=3, resume=cp)

    assert "chunk 2 " in str(err.value)
    assert not dst.local(rel).exists() and not dst.local(rel + ".partial").exists()
    assert cp.chunks == {}  # nothing bad is reused by a retry


def test_an_encrypted_session_copies_the_same_bytes(smb_servers, smb_dir):
    import dataclasses

    from workers.smb import connections

    src, dst = smb_servers
    data = os.urandom(2 * CHUNK + 3)
    rel = rf"{smb_dir}\sealed.vhdx"
    put(src, rel, data)
    s_ep, d_ep = (dataclasses.replace(x.endpoint, encrypt=True) for x in (src, dst))

    res = copy_file(s_ep, rel, d_ep, rel, streams=2)

    assert dst.local(rel).read_bytes() == data
    assert res.digest == chunks.digest_of_bytes(data)
    assert connections.tree(s_ep).session.encrypt_data  # really encrypted, not silently signed only


def test_the_copier_peak_resident_memory_stays_under_256_mib(smb_servers, smb_dir):
    import json
    import subprocess
    import sys

    src, dst = smb_servers
    rel = rf"{smb_dir}\rss.vhdx"
    put(src, rel, os.urandom(12 * CHUNK))
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would count the forked pytest image
    child = (
        "import json, os, sys\n"
        "from workers.model.chunks import local_chunk_digests\n"
        "from workers.smb.file_copy import PARTIAL_SUFFIX, copy_file\n"
        "from workers.smb.endpoint import SmbEndpoint\n"
        "a = json.loads(sys.argv[1]); pw = os.environ['QM_TEST_PW']\n"
        "s = SmbEndpoint('127.0.0.1', a['s'], 'vms', a['u'], pw, encrypt=a['enc'])\n"
        "d = SmbEndpoint('127.0.0.1', a['d'], 'vms', a['u'], pw, encrypt=a['enc'])\n"
        "def host_digests(first, count):\n"  # what the destination host's file_hash computes for a range
        "    return local_chunk_digests(a['local'] + PARTIAL_SUFFIX, first, count)\n"
        "copy_file(s, a['rel'], d, a['out'], dest_digests=host_digests if a['host'] else None)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n")
    # verified by the destination's digest, or read back
    for enc, host in ((False, True), (True, True), (False, False)):
        out_rel = f"{rel}-{enc}-{host}"
        args = {"s": src.endpoint.port, "d": dst.endpoint.port, "u": src.endpoint.username, "rel": rel, "enc": enc,
                "host": host, "out": out_rel, "local": str(dst.local(out_rel))}
        out = subprocess.run([sys.executable, "-c", child, json.dumps(args)], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, QM_TEST_PW=src.endpoint.password))
        assert out.returncode == 0, out.stderr
        rss_mib = int(out.stdout.split()[-1])
        assert 30 < rss_mib <= 256, (enc, host, rss_mib)
        assert dst.local(out_rel).stat().st_size == 12 * CHUNK
