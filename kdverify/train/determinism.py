"""Determinism mode and the numeric settings every result records.

`--deterministic` (CLI) / `--kd-deterministic` (pytest) pins the intra-op thread count, turns on
`torch.use_deterministic_algorithms` and the cuDNN flags, so two processes on one machine train
bit-identical weights. The default run records the thread count and kernels it used, too: the
same recipe on 1 and 2 threads, or AVX2 and AVX-512 kernels, lands a few errors apart.
"""

from __future__ import annotations

import os

import torch

DETERMINISTIC_THREADS = 1  # a count every machine has, so the mode means the same everywhere


def set_deterministic(threads: int = DETERMINISTIC_THREADS) -> None:
    """Pin threads and force deterministic kernels for the rest of the process."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs


def is_deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def numeric_settings(device: torch.device | str = "cpu") -> dict[str, object]:
    """What changes a trained model's bits besides its recipe: recorded in every checkpoint and verdict."""
    device = torch.device(device)
    settings: dict[str, object] = {"device_type": device.type, "torch": str(torch.__version__),
                                   "threads": torch.get_num_threads(), "deterministic": is_deterministic()}
    if device.type == "cpu":
        settings["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
    else:
        settings["gpu"] = torch.cuda.get_device_name(device)
    return settings


def cache_key_settings(device: torch.device | str = "cpu") -> str:
    """The part of a cache key that keeps models apart when they would differ: device type and kernels,
    torch version, determinism mode (thread count is recorded, not keyed: see README)."""
    s = numeric_settings(device)
    return "|".join(str(s[k]) for k in ("device_type", "torch", "deterministic")) + "|" + str(
        s.get("cpu_kernels") or s.get("gpu"))
