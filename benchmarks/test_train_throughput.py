"""Training throughput of the Hinton teacher: kdverify's loop vs a seed-style per-sample PIL loop.

Both train the same model (hinton_mlp, 784-1200-1200-10, dropout 0.2/0.5) with the same
recipe (`hinton-teacher`, paper budget: SGD lr 0.01 momentum 0.9, batch 128, +-2 px jitter)
on the same synthetic MNIST-shaped uint8 data (60000x28x28 random pixels, so no data is needed),
in one process (glibc heap thresholds raised for both, see `kdverify.train.cpu_memory`), at torch's
default thread count (all cores) unless --bench-train-threads says otherwise. Each
pytest-benchmark round is one training step (batch fetch included): 150 steps after 20 warm-up
steps, or fewer (at least 40) when a loop would take over 30 s.

- kdverify: `kdverify.train.loop.TrainingRun.step`, the step `fit` runs: one resident uint8 tensor,
  `iterate_batches` (one randperm), `augment(images, "jitter2", gen)` (one gather), `normalize`,
  the recipe's loss, zero_grad / backward / step of `make_optimizer(recipe)`.
- seed-style: a map-style Dataset returning one PIL image at a time, shifted by a random
  integer (dx, dy) in [-2, 2] with zero fill (PIL affine transform, what torchvision's
  RandomAffine(translate) does), converted by hand exactly like torchvision's ToTensor +
  Normalize (torchvision itself is not a dependency), DataLoader(batch_size=128, shuffle=True,
  num_workers=2), the same architecture with the seed's stock nn.Dropout (`seed_style_mlp`,
  which fills its masks with `bernoulli_`; kdverify's packed-bit dropout is part of what is
  measured), torch.optim.SGD(momentum=0.9) (foreach, the default).

A second pair, `kdverify-1t` and `seed-style-1t`, runs both loops with 1 torch thread in the
main process, as a reference (see `test_train_step`).

The kdverify test also measures this process's fp32 torch.mm rate (2048x2048, same threads)
before and after, and reports the achieved training FLOP rate as a fraction of it. Training
work per sample is counted as 6 x multiply-adds (forward 2 + backward 4 FLOPs per MAC), i.e.
3 x `kdverify.train.models.forward_flops`, which already counts 2 FLOPs per MAC; "6 x forward_flops"
would count every multiply-add twice (it comes out above torch.mm's own rate), so it is stored
as `achieved_gflops_6x_forward_flops` for reference only.
"""

from __future__ import annotations

import dataclasses
import resource
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks import _support as S
from kdverify.data import MNIST_CLASSES, MNIST_NORM, Dataset, Split
from kdverify.train import loop as kd_train
from kdverify.train.cpu_memory import keep_freed_memory
from kdverify.train.models import RandDropout, build_model, forward_flops
from kdverify.train.recipes import get_recipe

N_TRAIN = 60_000
STEPS, WARMUP_STEPS = 150, 20
# A loop slower than this many seconds for STEPS steps (a seed-style step can take ~0.35 s on a busy 2-core
# machine) gets fewer timed steps, never fewer than MIN_STEPS, so the whole run stays within 5 minutes.
TIME_BUDGET_S, MIN_STEPS = 30.0, 40
FIT_CHECK_STEPS = 40  # kdverify.train.loop.fit end to end on 40 batches: a cross-check of the piecewise timing
RECIPE = get_recipe("hinton-teacher", "original")  # the blog's recipe: SGD 0.01, momentum 0.9, batch 128, jitter2
SEED_WORKERS = 2


def _warm_up(step, settings: S.Settings) -> tuple[int, int]:  # noqa: ANN001
    """Run the warm-up steps (untimed by pytest-benchmark); return (timed steps, warm-up steps)."""
    warmup = max(3, round(WARMUP_STEPS * settings.rounds_scale))
    times = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times[warmup // 2:]))  # the later half: DataLoader workers have started
    steps = max(10, round(STEPS * settings.rounds_scale))
    budget = int(TIME_BUDGET_S * settings.rounds_scale / max(per_step, 1e-6))
    return min(steps, max(budget, min(steps, round(MIN_STEPS * settings.rounds_scale)))), warmup


@pytest.fixture(scope="module")
def synthetic_mnist() -> Dataset:
    keep_freed_memory()  # what TrainingRun does on CPU, done up front so both loops (one process) run with it
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_TRAIN, 1, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (N_TRAIN,), generator=gen)
    test = Split(images[:10].clone(), labels[:10].clone())  # only fit()'s per-epoch evaluation sees it
    return Dataset("mnist", "synthetic-uint8", "synthetic", MNIST_CLASSES, *MNIST_NORM, Split(images, labels), test)


# ---------------------------------------------------------------- kdverify


def kdverify_step(recipe, dataset: Dataset):  # noqa: ANN001, ANN201
    """One `kdverify.train.loop.TrainingRun.step` per call, fed by its own shuffled batches (what `fit` runs)."""
    run = kd_train.TrainingRun(recipe, dataset)
    state = {"step": 0, "batches": run.batches()}

    def step() -> None:
        batch = next(state["batches"], None)
        if batch is None:  # 170 steps fit in one epoch of 469; this only guards a larger --bench-rounds-scale
            state["batches"] = run.batches()
            batch = next(state["batches"])
        run.step(state["step"] / run.steps_per_epoch, *batch)
        state["step"] += 1

    return step, run.model


def fit_cross_check(recipe, dataset: Dataset, samples: int) -> float:  # noqa: ANN001
    """kdverify.train.loop.fit end to end for one epoch of `samples` training images: samples/s."""
    small = Dataset(dataset.name, dataset.variant, dataset.checksum, dataset.classes, dataset.mean, dataset.std,
                    Split(dataset.train.images[:samples], dataset.train.labels[:samples]), dataset.test)
    result = kd_train.fit(dataclasses.replace(recipe, epochs=1), small, progress=None)
    return samples / result.history[0].seconds


# ---------------------------------------------------------------- seed-style


class SeedStyleMNIST(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST-style: uint8 tensor storage, one PIL image per __getitem__."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, max_shift: int = 2):
        self.data, self.targets = images, labels  # (N, 28, 28) uint8, (N,) int64
        self.mean, self.std, self.max_shift = (mean,), (std,), max_shift

    def __len__(self) -> int:
        return len(self.data)

    def random_shift(self, img: Image.Image) -> Image.Image:
        """RandomAffine(degrees=0, translate) with an integer shift: output(x, y) = input(x - dx, y - dy), zero fill."""
        dx, dy = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy),
                             resample=Image.Resampling.NEAREST, fillcolor=0)

    @staticmethod
    def to_tensor(img: Image.Image) -> torch.Tensor:
        """torchvision.transforms.functional.to_tensor for a mode-L image: (1, H, W) float in [0, 1]."""
        t = torch.from_numpy(np.array(img, np.uint8, copy=True))
        t = t.view(img.size[1], img.size[0], len(img.getbands())).permute((2, 0, 1)).contiguous()
        return t.to(dtype=torch.get_default_dtype()).div(255)

    def normalize(self, t: torch.Tensor) -> torch.Tensor:
        """torchvision.transforms.functional.normalize: (t - mean) / std per channel."""
        mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return t.sub_(mean).div_(std)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[i].numpy())
        img = self.random_shift(img)
        return self.normalize(self.to_tensor(img)), int(self.targets[i])


def seed_style_mlp(recipe) -> nn.Module:  # noqa: ANN001
    """kdverify's architecture with the seed's dropout: every RandDropout swapped for a stock nn.Dropout."""
    model = build_model(recipe.arch, **recipe.arch_kwargs)
    for name, module in list(model.named_modules()):
        if isinstance(module, RandDropout):
            model.set_submodule(name, nn.Dropout(module.p))
    return model


def seed_style_step(recipe, dataset: Dataset):  # noqa: ANN001, ANN201
    """A seed-style training step as a closure; also returns the DataLoader iterator to shut down."""
    ds = SeedStyleMNIST(dataset.train.images[:, 0], dataset.train.labels, dataset.mean[0], dataset.std[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=recipe.batch_size, shuffle=True, num_workers=SEED_WORKERS,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(recipe.seed)
    model = seed_style_mlp(recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    state = {"it": iter(loader)}
    model.train()

    def step() -> None:
        try:
            images, labels = next(state["it"])
        except StopIteration:  # a new epoch (only with a larger --bench-rounds-scale)
            state["it"] = iter(loader)
            images, labels = next(state["it"])
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step, state


# ---------------------------------------------------------------- the benchmarks


@pytest.mark.parametrize("loop", S.TRAIN_LOOPS)
def test_train_step(benchmark, synthetic_mnist: Dataset, bench_settings: S.Settings, bench_results: list,
                    train_threads: int, loop: str) -> None:
    """`kdverify` vs `seed-style` (all cores) is the comparison asked for. The `-1t` pair runs both loops
    with 1 torch thread in the main process, as a reference: with 2 torch threads, 2 loader workers (or
    another job) on 2 cores, OpenMP threads stall each other at every parallel region, and that stall,
    not the data pipeline, can dominate a step."""
    threads = 1 if loop.endswith("-1t") else train_threads
    recipe = RECIPE
    benchmark.group = f"train hinton-teacher b={recipe.batch_size}"
    info = benchmark.extra_info
    state = None
    if loop == "kdverify":
        mm_before = S.mm_gflops()
    if loop.startswith("kdverify"):
        step, _ = kdverify_step(recipe, synthetic_mnist)
        description = "iterate_batches + augment(jitter2) + normalize + fwd/bwd/SGD step (as kdverify.train.loop.fit)"
        description += " (1 torch thread)" if threads == 1 else ""
    else:
        step, state = seed_style_step(recipe, synthetic_mnist)
        description = (f"DataLoader({SEED_WORKERS} workers, shuffle): PIL shift + ToTensor/Normalize per sample; "
                       "stock nn.Dropout fwd/bwd/SGD" + (" (1 torch thread)" if threads == 1 else ""))
    try:
        with S.torch_threads(threads):
            steps, warmup = _warm_up(step, bench_settings)
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            benchmark.pedantic(step, rounds=steps, iterations=1, warmup_rounds=0)
            info["page_faults_per_step"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
    finally:
        if state is not None:
            shutdown = getattr(state["it"], "_shutdown_workers", None)  # stop the workers before the next benchmark
            if shutdown:
                shutdown()
            del state["it"]

    shape = synthetic_mnist.input_shape
    flops = forward_flops(build_model(recipe.arch, **recipe.arch_kwargs), shape)
    info.update(kind="train", loop=loop, description=description, batch=recipe.batch_size, steps=steps,
                warmup_steps=warmup, threads=threads, flops_per_sample=flops,
                data=f"{len(synthetic_mnist.train)}x{'x'.join(map(str, shape[1:]))}",
                model="Hinton teacher MLP 784-1200-1200-10 (dropout 0.2/0.5)",
                optimizer=f"SGD lr {recipe.lr} momentum {recipe.momentum}",
                workers=0 if loop.startswith("kdverify") else SEED_WORKERS,
                keep_freed_memory=keep_freed_memory())
    if benchmark.stats is None:  # --benchmark-disable: a smoke test
        return
    data = benchmark.stats.stats.data
    lat = S.latency_stats(data, recipe.batch_size)
    info.update(p50_ms=lat["p50_ms"], p90_ms=lat["p90_ms"], p99_ms=lat["p99_ms"], mean_ms=lat["mean_ms"],
                samples_per_s=recipe.batch_size * len(data) / sum(data))  # sustained: all samples / all time
    if loop == "kdverify":
        mm = max(mm_before, S.mm_gflops())
        macs = flops / 2  # forward_flops counts 2 FLOPs per multiply-add
        achieved = 6 * macs * info["samples_per_s"] / 1e9  # forward + backward = 6 FLOPs per MAC
        fit_samples = max(8, round(FIT_CHECK_STEPS * bench_settings.rounds_scale)) * recipe.batch_size
        t0 = time.perf_counter()
        fit_rate = fit_cross_check(recipe, synthetic_mnist, fit_samples)
        info.update(mm_gflops=mm, mm_gflops_before=mm_before, train_flops_per_sample=6 * macs,
                    achieved_gflops=achieved, flop_fraction_of_mm=achieved / mm,
                    achieved_gflops_6x_forward_flops=2 * achieved, fit_samples=fit_samples, fit_samples_per_s=fit_rate,
                    fit_seconds=time.perf_counter() - t0)
    bench_results.append(info)
