"""Settings of a benchmark run and the timing helpers every benchmark shares.

Nothing here is timed; the tests in this folder time only the calls they hand to
`benchmark.pedantic`.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torch's own default, read before any benchmark changes it (it is the number of cores torch uses).
DEFAULT_TORCH_THREADS = torch.get_num_threads()

ENV_THREADS = "KDVERIFY_BENCH_THREADS"
ENV_TRAIN_THREADS = "KDVERIFY_BENCH_TRAIN_THREADS"
ENV_ROUNDS_SCALE = "KDVERIFY_BENCH_ROUNDS_SCALE"

RUNTIMES = ("torch-eager", "ort-fp32", "ort-int8")
BATCHES = (1, 256)
TRAIN_LOOPS = ("kdverify", "seed-style", "kdverify-1t", "seed-style-1t")

# Round planning: after a short warm-up, as many rounds as fit in a time budget, within bounds.
# (budget seconds, min rounds, max rounds, warm-up calls) per batch size; scaled by rounds_scale.
ROUND_PLAN = {1: (3.0, 50, 200, 10), 256: (6.0, 5, 30, 2)}


@dataclass(frozen=True)
class Settings:
    threads: int  # torch.set_num_threads and ORT intra_op for the inference benchmarks
    train_threads: int  # torch threads for the training benchmark
    rounds_scale: float
    cache_dir: Path  # trained-model cache looked in for the built-in pairs' checkpoints
    data_root: str | None  # where test errors are measured when a checkpoint records none (None: kdverify's default)


def _int_setting(config: Any, option: str, env: str, default: int) -> int:
    value = int(config.getoption(option, None) or os.environ.get(env) or default)
    if value < 1:
        raise ValueError(f"{option} / {env} must be >= 1, got {value}")
    return value


def settings_from(config: Any) -> Settings:
    from kdverify.paths import model_cache_dir

    scale = float(config.getoption("--bench-rounds-scale", None) or os.environ.get(ENV_ROUNDS_SCALE) or 1.0)
    kd_cache = config.getoption("--kd-cache", None)  # the kdverify plugin's options, when it is loaded
    return Settings(
        threads=_int_setting(config, "--bench-threads", ENV_THREADS, 1),
        train_threads=_int_setting(config, "--bench-train-threads", ENV_TRAIN_THREADS, DEFAULT_TORCH_THREADS),
        rounds_scale=max(scale, 0.01),
        cache_dir=model_cache_dir(kd_cache),
        data_root=config.getoption("--kd-data-root", None),
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "python": platform.python_version()}


def header_line(settings: Settings) -> str:
    v = versions()
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs) | inference threads: torch.set_num_threads"
            f"({settings.threads}), ORT intra_op={settings.threads} inter_op=1 spinning off | training threads: "
            f"torch {settings.train_threads} | torch {v['torch']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
            f"python {v['python']}")


class torch_threads:  # noqa: N801 - used like a context manager function
    """Set torch's intra-op thread count for a block, then restore it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def latency_stats(times_s: list[float], batch: int) -> dict[str, float]:
    """p50/p90/p99 of per-call times (numpy.percentile, linear interpolation) and samples/s = batch / p50."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {"rounds": int(ms.size), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "samples_per_s": batch * 1e3 / p50}


def warm_up_and_plan(fn: Callable[[], Any], batch: int, scale: float) -> tuple[int, int]:
    """Run the warm-up calls (untimed by pytest-benchmark) and return (rounds, warm-up calls).

    Rounds fill the batch size's time budget at the warm-up's speed, within its bounds, so a
    0.1 ms MLP gets 200 rounds and a 2 s DeepNN batch gets 5; everything is scaled by `scale`.
    """
    budget, lo, hi, warm = ROUND_PLAN[batch]
    times = []
    for _ in range(warm):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    per_call = float(np.median(times[1:] if len(times) > 1 else times))
    rounds = int(budget * scale / max(per_call, 1e-9))
    rounds = min(max(rounds, math.ceil(lo * scale)), math.ceil(hi * scale))
    return max(rounds, 3), warm


def mm_gflops(n: int = 2048, reps: int = 6) -> float:
    """fp32 torch.mm rate of this process at the current torch thread count (median of `reps`)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9
