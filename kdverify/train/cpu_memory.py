"""Keep freed tensor memory in the process heap on glibc, instead of handing it back to the OS.

A training step frees and re-allocates the same multi-megabyte buffers (weight gradients,
activations) every iteration. glibc serves blocks above its mmap threshold with fresh `mmap`s
and trims the top of the heap back to the OS, so each step touched ~100-460 new pages that the
kernel had to fault in and zero: ~1.5 ms of a 15 ms Hinton-teacher step on 2 cores (measured
with `ru_minflt`). Raising both thresholds keeps those pages mapped and reused. PyTorch's CPU
tuning guides get the same effect by preloading jemalloc or tcmalloc; this needs no preload.
The cost: a process keeps up to `TRIM_THRESHOLD` of freed memory resident. A no-op off glibc.

Opt-in and explicit: kdverify's own processes (the `kdverify` CLI's train/distill, the claims
plugin's session) call it; the library (`fit`, `TrainingRun`) never changes the allocator of a
process that imported it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 64 << 20  # blocks below this come from the heap (glibc's default starts at 128 KiB)
TRIM_THRESHOLD = 256 << 20  # free memory at the heap top beyond this goes back to the OS


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version  # both exist only in glibc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
