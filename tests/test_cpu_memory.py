"""keep_freed_memory must change what glibc does, not only report that it was called.

The allocator settings are process-wide and cannot be undone, so each check runs in a fresh
interpreter: a 48 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB, below
kdverify's 64 MiB) is mmapped by default, but with the thresholds raised it comes from the heap
and stays resident after `free` (not trimmed back to the OS).
"""

import json
import subprocess
import sys

import pytest

from kdverify.train import cpu_memory

pytestmark = pytest.mark.processes

PROBE = """
import ctypes, json, sys
from kdverify.train import cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); sys.exit(0)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = cpu_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
before = libc.mallinfo2()
block = libc.malloc(48 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mmapped": during.hblkhd - before.hblkhd, "heap": during.arena - before.arena,
                  "heap_after_free": after.arena - before.arena}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    if result is None:
        pytest.skip("glibc without mallinfo2 (< 2.33)")
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_large_blocks_come_from_the_heap_and_stay_there():
    if not cpu_memory.keep_freed_memory.__wrapped__():
        pytest.skip("not glibc: mallopt unavailable")
    default, kept = _probe("default"), _probe("keep")
    mib = 48 << 20
    assert default["mmapped"] >= mib and default["heap"] < mib, f"control: glibc's default mmaps the block {default}"
    assert kept["applied"] is True
    assert kept["mmapped"] == 0 and kept["heap"] >= mib, f"the block was not served from the heap: {kept}"
    assert kept["heap_after_free"] >= mib, f"the freed block was trimmed back to the OS: {kept}"


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory.__wrapped__() is False
