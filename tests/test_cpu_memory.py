import resource
import sys

import pytest
import torch

from kdverify.cpu_memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_freed_buffers_are_reused_without_page_faults():
    """What the trainer relies on: a freed 8 MB buffer comes back without the kernel faulting in fresh pages."""
    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt unavailable")
    assert keep_freed_memory()  # idempotent
    for _ in range(3):  # let the heap grow to its working size first
        torch.empty(2 << 20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(2 << 20).fill_(1.0)  # 8 MB: 2048 pages each if served by a fresh mmap
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2048, f"{faults} minor page faults for 20 reused 8 MB buffers"
