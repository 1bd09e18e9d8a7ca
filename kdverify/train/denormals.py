"""Flush denormal floats to zero in kdverify's own training processes: the same weights, epochs that stay fast.

A ReLU unit that never fires gets exactly zero gradient, and SGD's momentum for its weights then decays by 0.9 a
step into the denormal range (below 1.2e-38), where every x86 multiply takes a slow microcode path. The Hinton KD
student's epochs grew from 3.2 to 5-8 s over its 60 epochs on 2 Xeon cores; with denormals flushed they stay near
3 s (384 -> 225 s in all). A denormal momentum moves no weight (it is 30 orders of magnitude below a weight's last
bit), so the trained weights are bit-identical: sha256 compared for the built-in students on AVX-512 and AVX2
kernels, 1 and 2 threads (tests/test_train.py checks that every thread torch starts afterwards flushes).

The mode is per thread (x86's MXCSR): `torch.set_flush_denormal` sets the calling thread's, and threads started
after it (torch's OpenMP pool) inherit it, threads already running do not. So it is set before a process's first
parallel op wherever possible. Opt-in and explicit, like `kdverify.train.cpu_memory`: the CLI's train and distill,
a pytest session that collected claims, a Ray training task; the library never changes a process's float mode.
"""

from __future__ import annotations


def flush_denormals() -> bool:
    """Flush denormals to zero on this thread and the threads it starts; True where the CPU supports it."""
    import torch

    return bool(torch.set_flush_denormal(True))
