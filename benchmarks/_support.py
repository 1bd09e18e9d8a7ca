"""Shared pieces of the benchmarks: settings, the model zoo, ONNX exports, percentiles, the summary.

Nothing here is timed; the tests in this folder time only the calls they hand to
`benchmark.pedantic`.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
TRAIN_LOOPS = ("kdverify", "seed-style", "kdverify-1t", "seed-style-1t")
BATCHES = (1, 256)
# pair -> (teacher recipe, student recipe); a recipe names the cache files and gives arch + kwargs.
PAIRS = {
    "mnist-mlp": ("hinton-teacher", "hinton-student-kd"),
    "cifar-cnn": ("tutorial-deepnn", "tutorial-lightnn-kd"),
}
LABELS = {
    "hinton-teacher": "teacher MLP-1200",
    "hinton-student-kd": "student MLP-800",
    "tutorial-deepnn": "teacher DeepNN",
    "tutorial-lightnn-kd": "student LightNN",
}
INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CALIBRATION_SIZE = 256

# Round planning: after a short warm-up, as many rounds as fit in a time budget, within bounds.
# (budget seconds, min rounds, max rounds, warm-up calls) per batch size; scaled by rounds_scale.
ROUND_PLAN = {1: (3.0, 50, 200, 10), 256: (6.0, 5, 30, 2)}


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    threads: int  # torch.set_num_threads and ORT intra_op for the inference benchmarks
    train_threads: int  # torch threads for the training benchmark
    rounds_scale: float
    cache_dir: Path  # trained-model cache looked in for checkpoints


def _int_setting(config: Any, option: str, env: str, default: int) -> int:
    value = config.getoption(option, None) or os.environ.get(env) or default
    value = int(value)
    if value < 1:
        raise ValueError(f"{option} / {env} must be >= 1, got {value}")
    return value


def settings_from(config: Any) -> Settings:
    from kdverify.data import default_cache_dir

    scale = float(config.getoption("--bench-rounds-scale", None) or os.environ.get(ENV_ROUNDS_SCALE) or 1.0)
    kd_cache = config.getoption("--kd-cache", None)  # the kdverify plugin's option, when it is loaded
    return Settings(
        threads=_int_setting(config, "--bench-threads", ENV_THREADS, 1),
        train_threads=_int_setting(config, "--bench-train-threads", ENV_TRAIN_THREADS, DEFAULT_TORCH_THREADS),
        rounds_scale=max(scale, 0.01),
        cache_dir=Path(kd_cache).expanduser() if kd_cache else default_cache_dir() / "models",
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


# ---------------------------------------------------------------- timing helpers


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


# ---------------------------------------------------------------- models and exports


@dataclass
class ZooModel:
    recipe: str
    pair: str
    role: str  # teacher | student
    label: str
    arch: str
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: torch.nn.Module
    weights: str  # where the weights came from, in words
    trained: bool
    test_errors: int | None
    test_total: int | None
    params: int
    flops: int  # forward FLOPs per sample (kdverify.models.forward_flops)
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> file
    int8_method: str = ""


def _checkpoint_candidates(cache_dir: Path, recipe: str) -> list[Path]:
    """`<recipe>-seed<N>-<key>.pt`, newest first; `hinton-student-kd` does not match `...-kd-no3-...`."""
    pattern = re.compile(rf"^{re.escape(recipe)}-seed\d+-[0-9a-f]+\.pt$")
    try:
        found = [p for p in cache_dir.iterdir() if pattern.match(p.name) and p.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def load_zoo_model(recipe_name: str, pair: str, role: str, cache_dir: Path) -> ZooModel:
    """The newest trained checkpoint of `recipe_name` in the cache (any budget), else fresh weights."""
    from kdverify.checkpoint import load_checkpoint
    from kdverify.data import CIFAR_NORM, MNIST_NORM
    from kdverify.errors import KdverifyError
    from kdverify.models import build_model, count_parameters, forward_flops
    from kdverify.recipes import get_recipe

    # The original recipe's architecture (the fast teacher uses lighter dropout; inference runs in eval mode).
    recipe = get_recipe(recipe_name, "original")
    input_shape = INPUT_SHAPES[recipe.dataset]
    mean, std = MNIST_NORM if recipe.dataset == "mnist" else CIFAR_NORM
    model, weights, errors, total = None, "", None, None
    problems = []
    for path in _checkpoint_candidates(cache_dir, recipe_name):
        try:
            ckpt = load_checkpoint(path)
        except KdverifyError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if ckpt.arch != recipe.arch:
            problems.append(f"{path.name}: architecture {ckpt.arch}, expected {recipe.arch}")
            continue
        model = ckpt.model
        test = ckpt.metrics.get("test") if isinstance(ckpt.metrics.get("test"), dict) else {}
        errors, total = test.get("errors"), test.get("total")
        epochs = ckpt.recipe.get("epochs")
        weights = f"trained: {path}" + (f" ({epochs} epochs, {ckpt.dataset_variant})" if epochs else "")
        if problems:
            weights += f"; skipped newer: {'; '.join(problems)}"
        if ckpt.mean and ckpt.std:
            mean, std = tuple(ckpt.mean), tuple(ckpt.std)
        break
    if model is None:
        torch.manual_seed(0)
        model = build_model(recipe.arch, **recipe.arch_kwargs)
        why = "; ".join(problems) if problems else f"no {recipe_name}-seed*-*.pt in {cache_dir}"
        weights = f"fresh init, seed 0 ({why})"
    model.eval()
    return ZooModel(recipe_name, pair, role, LABELS.get(recipe_name, recipe_name), recipe.arch, input_shape,
                    tuple(mean), tuple(std), model, weights, not weights.startswith("fresh"),
                    int(errors) if errors is not None else None, int(total) if total is not None else None,
                    count_parameters(model), forward_flops(model, input_shape))


def random_inputs(entry: ZooModel, batch: int, seed: int = 0) -> torch.Tensor:
    """Normalised random pixels of the model's input shape (what a deployed model is fed)."""
    from kdverify.data import normalize

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, *entry.input_shape), generator=gen, dtype=torch.uint8)
    return normalize(images, entry.mean, entry.std).contiguous()


class Zoo:
    """Models, ONNX files (exported once per session, lazily), ORT sessions and inputs."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings, self.workdir = settings, workdir
        self._models: dict[str, ZooModel] = {}
        self._sessions: dict[tuple[str, str], Any] = {}
        self._inputs: dict[tuple[str, int], torch.Tensor] = {}
        self.export_seconds = 0.0

    def models(self) -> list[ZooModel]:
        return list(self._models.values())

    def model(self, pair: str, role: str) -> ZooModel:
        recipe = PAIRS[pair][0 if role == "teacher" else 1]
        if recipe not in self._models:
            self._models[recipe] = load_zoo_model(recipe, pair, role, self.settings.cache_dir)
        return self._models[recipe]

    def onnx_path(self, entry: ZooModel, precision: str) -> Path:
        """fp32: kdverify.export.export_model; int8: kdverify.export.quantize_int8 of the fp32 file."""
        from kdverify import quantize as export  # int8_method lives in kdverify.quantize
        from kdverify.export import export_model
        from kdverify.quantize import quantize_int8

        if precision in entry.onnx:
            return entry.onnx[precision]
        t0 = time.perf_counter()
        if "fp32" not in entry.onnx:
            path = self.workdir / f"{entry.recipe}.onnx"
            export_model(entry.model, entry.input_shape, path,
                         metadata={"source": entry.weights, "purpose": "kdverify benchmarks"})
            entry.onnx["fp32"] = path
        if precision == "int8":
            calibration = random_inputs(entry, CALIBRATION_SIZE, seed=1)
            path = self.workdir / f"{entry.recipe}.int8.onnx"
            method = getattr(export, "int8_method", None)  # a helper, not part of the promised API
            entry.int8_method = method(entry.onnx["fp32"], calibration) if method else "kdverify.export default"
            quantize_int8(entry.onnx["fp32"], path, calibration)
            entry.onnx["int8"] = path
        self.export_seconds += time.perf_counter() - t0
        return entry.onnx[precision]

    def session(self, entry: ZooModel, precision: str):  # noqa: ANN201 - onnxruntime.InferenceSession
        from kdverify.validate import ort_session

        key = (entry.recipe, precision)
        if key not in self._sessions:
            self._sessions[key] = ort_session(self.onnx_path(entry, precision), threads=self.settings.threads,
                                              optimization="all")
        return self._sessions[key]

    def inputs(self, entry: ZooModel, batch: int) -> torch.Tensor:
        key = (entry.recipe, batch)
        if key not in self._inputs:
            self._inputs[key] = random_inputs(entry, batch)
        return self._inputs[key]


# ---------------------------------------------------------------- derived numbers and the summary


def _find(records: list[dict], **match: Any) -> dict | None:
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def derive(records: list[dict]) -> None:
    """Cross-benchmark numbers, written into each benchmark's extra_info (so saved JSON has them too)."""
    inference = [r for r in records if r.get("kind") == "inference" and "p50_ms" in r]
    for r in inference:
        base = _find(inference, pair=r["pair"], batch=r["batch"], role="teacher", runtime="torch-eager")
        r["speedup_vs_teacher_eager"] = base["p50_ms"] / r["p50_ms"] if base else None
    train = [r for r in records if r.get("kind") == "train" and "samples_per_s" in r]
    for suffix in ("", "-1t"):
        ours, seed = _find(train, loop="kdverify" + suffix), _find(train, loop="seed-style" + suffix)
        if ours and seed:
            ours["ratio_vs_seed_style"] = seed["ratio_vs_seed_style"] = ours["samples_per_s"] / seed["samples_per_s"]


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _fmt_size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def summary_lines(records: list[dict], settings: Settings, zoo: Zoo | None) -> list[str]:
    lines = [header_line(settings)]
    inference = [r for r in records if r.get("kind") == "inference" and "p50_ms" in r]
    train = [r for r in records if r.get("kind") == "train" and "samples_per_s" in r]
    if inference:
        lines += _inference_lines(inference, settings, zoo)
    if train:
        lines += [""] + _train_lines(train, settings)
    return lines


def _inference_lines(records: list[dict], settings: Settings, zoo: Zoo | None) -> list[str]:
    lines = ["", ("Inference latency and throughput (random inputs; p50/p90/p99 over per-call times, "
                 "samples/s = batch / p50, vs T-eager = teacher torch-eager p50 / this p50 at the same batch)")]
    order = {name: i for i, name in enumerate(RUNTIMES)}
    pairs = list(PAIRS)
    records = sorted(records, key=lambda r: (pairs.index(r["pair"]), r["batch"], r["role"] != "teacher",
                                             order[r["runtime"]]))
    head = ["pair", "model", "runtime", "batch", "params", "ONNX size", "rounds", "p50 ms", "p90 ms", "p99 ms",
            "samples/s", "vs T-eager", "test errors"]
    rows = []
    for r in records:
        speedup = r.get("speedup_vs_teacher_eager")
        rows.append([r["pair"], r["label"], r["runtime"], r["batch"], f"{r['params']:,}",
                     _fmt_size(r.get("onnx_bytes")), r["rounds"],
                     _fmt_ms(r["p50_ms"]), _fmt_ms(r["p90_ms"]), _fmt_ms(r["p99_ms"]),
                     f"{r['samples_per_s']:,.0f}", f"{speedup:.2f}x" if speedup else "-", r.get("test_errors") or "-"])
    lines += _table(head, rows, right={3, 4, 5, 6, 7, 8, 9, 10, 11})
    if zoo is not None and zoo.models():
        lines += ["", ("Weights (test errors from the checkpoint's metrics, PyTorch at training time; the fp32 "
                      "export computes the same function; int8 accuracy is not measured here):")]
        for m in zoo.models():
            quant = f", int8: {m.int8_method} quantisation" if m.int8_method else ""
            lines.append(f"  {m.label:<17} {m.weights}{quant}")
        from kdverify.export import DEFAULT_OPSET

        lines.append(f"  ONNX: kdverify.export.export_model (opset {DEFAULT_OPSET}, dynamic batch) + quantize_int8, "
                     f"{zoo.export_seconds:.1f} s in all, untimed; static int8 is calibrated on "
                     f"{CALIBRATION_SIZE} random-pixel inputs")
    lines += ["", "Target checks (measured facts, not asserts):"]
    for pair in (p for p in PAIRS if any(r["pair"] == p for r in records)):
        lines += [f"  [{pair}]"] + _checks(records, pair)
    return lines


def _checks(records: list[dict], pair: str) -> list[str]:
    get = lambda role, runtime, batch: _find(records, pair=pair, role=role, runtime=runtime, batch=batch)  # noqa: E731
    out = []
    s1, t1 = get("student", "ort-fp32", 1), get("teacher", "torch-eager", 1)
    if s1 and t1:
        half = t1["p50_ms"] / 2
        out.append(f"    (a) student ORT fp32 b=1 p50 {_fmt_ms(s1['p50_ms'])} ms vs 1/2 of teacher eager b=1 p50 "
                   f"({_fmt_ms(t1['p50_ms'])} / 2 = {_fmt_ms(half)} ms): {t1['p50_ms'] / s1['p50_ms']:.2f}x faster, "
                   f"target >= 2x -> {_verdict(s1['p50_ms'] <= half)}")
    else:
        out.append("    (a) not measured (needs student ort-fp32 b=1 and teacher torch-eager b=1)")
    s, t = get("student", "ort-fp32", 256), get("teacher", "ort-fp32", 256)
    if s and t:
        speedup, flop_ratio = t["p50_ms"] / s["p50_ms"], t["flops_per_sample"] / s["flops_per_sample"]
        out.append(f"    (b) b=256 ORT fp32 student/teacher speedup {speedup:.2f}x vs 80% of FLOP ratio "
                   f"(0.8 x {t['flops_per_sample'] / 1e6:.2f}/{s['flops_per_sample'] / 1e6:.2f} MFLOP = "
                   f"{0.8 * flop_ratio:.2f}x): {speedup / flop_ratio:.0%} of the FLOP ratio -> "
                   f"{_verdict(speedup >= 0.8 * flop_ratio)}")
    else:
        out.append("    (b) not measured (needs teacher and student ort-fp32 b=256)")
    q, f = get("student", "ort-int8", 256), get("student", "ort-fp32", 256)
    if q and f:
        ratio = f["p50_ms"] / q["p50_ms"]
        out.append(f"    (c) b=256 student ORT int8 p50 {_fmt_ms(q['p50_ms'])} ms vs fp32 {_fmt_ms(f['p50_ms'])} ms: "
                   f"int8 is {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}; size "
                   f"{_fmt_size(q.get('onnx_bytes'))} vs {_fmt_size(f.get('onnx_bytes'))} -> target int8 faster: "
                   f"{_verdict(ratio > 1)}")
    else:
        out.append("    (c) not measured (needs student ort-int8 and ort-fp32 b=256)")
    return out


def _train_lines(records: list[dict], settings: Settings) -> list[str]:
    first = records[0]
    lines = [(f"Training throughput: {first['model']}, batch {first['batch']}, {first['optimizer']}, "
             f"+-2 px jitter, synthetic uint8 {first['data']}; torch threads {settings.train_threads} (all cores "
             f"unless --bench-train-threads); per loop {first['warmup_steps']} warm-up steps, then up to "
             "150 timed steps (fewer when a loop would take over 30 s); glibc heap thresholds raised for both "
             f"loops (kdverify.cpu_memory): {'yes' if first.get('keep_freed_memory') else 'no (not glibc)'}")]
    head = ["loop", "threads", "steps", "samples/s", "ms/step p50", "ms/step p90", "faults/step", "what is timed"]
    order = list(TRAIN_LOOPS)
    rows = [[r["loop"], r["threads"], r["steps"], f"{r['samples_per_s']:,.0f}", _fmt_ms(r["p50_ms"]),
             _fmt_ms(r["p90_ms"]), f"{r.get('page_faults_per_step', float('nan')):.1f}", r["description"]]
            for r in sorted(records, key=lambda r: order.index(r["loop"]))]
    lines += ["  " + line for line in _table(head, rows, right={1, 2, 3, 4, 5, 6})]
    ours, seed = _find(records, loop="kdverify"), _find(records, loop="seed-style")
    ours_1t, seed_1t = _find(records, loop="kdverify-1t"), _find(records, loop="seed-style-1t")
    lines.append("  Target checks (measured facts, not asserts):")
    if ours and seed:
        ratio = ours["samples_per_s"] / seed["samples_per_s"]
        lines.append(f"    kdverify / seed-style samples/s = {ratio:.2f}x, target >= 2.5x -> "
                     f"{_verdict(ratio >= 2.5)}")
    else:
        lines.append("    kdverify / seed-style ratio not measured (needs both loops)")
    if ours_1t and seed_1t:
        ratio_1t = ours_1t["samples_per_s"] / seed_1t["samples_per_s"]
        lines.append(f"      reference at 1 torch thread each: kdverify-1t / seed-style-1t = {ratio_1t:.2f}x "
                     "(no OpenMP oversubscription in either main process)")
    if ours:
        frac = ours["flop_fraction_of_mm"]
        lines.append(f"    kdverify FLOP rate 6 x {ours['flops_per_sample'] / 2e6:.3f} M multiply-adds (= 3 x "
                     f"forward_flops {ours['flops_per_sample'] / 1e6:.3f} MFLOP) x {ours['samples_per_s']:,.0f} "
                     f"samples/s = {ours['achieved_gflops']:.1f} GFLOP/s = {frac:.0%} of torch.mm fp32 2048x2048 "
                     f"({ours['mm_gflops']:.1f} GFLOP/s, best of before/after, same process, {ours['threads']} "
                     f"threads), target >= 60% -> {_verdict(frac >= 0.6)}")
        lines.append(f"      (6 x forward_flops would count each multiply-add twice: "
                     f"{ours['achieved_gflops_6x_forward_flops']:.1f} GFLOP/s = {2 * frac:.0%}; not used)")
        if ours.get("fit_samples_per_s"):
            lines.append(f"    cross-check: kdverify.train.fit() end to end, 1 epoch of {ours['fit_samples']:,} "
                         f"samples (incl. its first steps and a 10-image evaluation): "
                         f"{ours['fit_samples_per_s']:,.0f} samples/s")
    return lines
