"""Keep the copier's resident memory bounded (<= 256 MiB with the default streams).

Each stream thread and each connection's receive thread allocates and frees 8 MiB
buffers; glibc gives every thread that contends for malloc its own arena and keeps freed
blocks there, so resident memory grows with the number of threads rather than with the
bytes actually in flight. One arena is enough for this workload, whose threads mostly wait
on sockets (measured, 1 GiB copy with the request budget of workers.smb.file_copy, peak RSS:
2 streams 156 -> 148 MiB, 4 streams 206 -> 164 MiB going from two arenas to one).
Forcing large buffers into their own mappings (M_MMAP_THRESHOLD) bounds memory further
but page-faults every buffer: it more than doubled the CPU per copied byte, so the
request budget bounds memory instead. No-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8
ARENAS = 1
_done = False


def limit_arenas() -> None:
    global _done
    if _done:
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, ARENAS)
    except (OSError, AttributeError):
        pass
