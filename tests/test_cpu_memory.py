import sys

import pytest

from kdverify import cpu_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_thresholds_are_set_once_on_glibc():
    """The page faults it saves are measured where timings belong: the training benchmark (faults/step)."""
    if not cpu_memory.keep_freed_memory.__wrapped__():
        pytest.skip("not glibc: mallopt unavailable")
    assert cpu_memory.keep_freed_memory() is True
    assert cpu_memory.keep_freed_memory() is True  # cached: once per process


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory.__wrapped__() is False
