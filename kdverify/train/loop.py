"""One training loop for every objective (CE, KD, cosine, hint); evaluation lives in `kdverify.train.metrics`.

The loop keeps the whole transfer set on the device, shuffles with one randperm, augments a
batch with one gather, and evaluates the whole test split in a few large batches. When the
recipe has no augmentation the teacher's outputs are fixed, so they are computed once for the
whole transfer set instead of once per batch per epoch.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from kdverify.data import (
    Augmentation,
    Dataset,
    Split,
    balanced_subset,
    filter_classes,
    get_augmentation,
    iterate_batches,
    normalize,
    split_holdout,
)
from kdverify.train.metrics import EVAL_BATCH, Evaluation, evaluate
from kdverify.train.models import TappedModel, build_model, preferred_memory_format, shape_kwargs
from kdverify.train.objectives import get_objective
from kdverify.train.recipes import Recipe

TRAINER_VERSION = "4"  # bump when a change alters trained weights for the same recipe (part of cache keys)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    test_errors: int
    seconds: float


@dataclass
class TrainResult:
    model: TappedModel
    recipe: Recipe
    evaluation: Evaluation
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    arch_kwargs: dict = field(default_factory=dict)  # what the model was built with (recipe's + the data's shape)


def model_kwargs(recipe: Recipe, dataset: Dataset) -> dict:
    """Constructor arguments: the data's shape (classes, channels, pixels) where the architecture takes them,
    then the recipe's own, which win. Never guessed: taken from the dataset the model trains on."""
    return {**shape_kwargs(recipe.arch, dataset.input_shape, len(dataset.classes)), **recipe.arch_kwargs}


ProgressFn = Callable[[Recipe, EpochRecord, int], None]


def progress_line(recipe: Recipe, record: EpochRecord, test_total: int) -> str:
    """Epoch, loss, test errors, time per epoch and time left, on one line."""
    left = (recipe.epochs - record.epoch) * record.seconds
    return (f"[{recipe.name} seed {recipe.seed}] epoch {record.epoch:>4}/{recipe.epochs}  loss {record.loss:.4f}  "
            f"test errors {record.test_errors} ({100 * record.test_errors / test_total:.2f}%)  "
            f"{record.seconds:.1f}s/epoch  ETA {duration_text(left)}")


def duration_text(seconds: float) -> str:
    """'00:04:26', '3d 01:02:03' past a day (a clock alone wraps every 24 h)."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def print_progress(recipe: Recipe, record: EpochRecord, test_total: int) -> None:
    """Default progress: one line per epoch on stderr."""
    print(progress_line(recipe, record, test_total), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- training


def transfer_indices(recipe: Recipe, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the training split of what a recipe trains on, and of its held-out slice.

    The held-out slice is taken before class filters (so it keeps every class). Indices, not
    copies, so teacher outputs computed once over the whole split serve every transfer set.
    """
    labels = dataset.train.labels
    index = torch.arange(len(labels), device=labels.device)
    if recipe.train_subset:
        index = balanced_subset(Split(index, labels), recipe.train_subset, len(dataset.classes),
                                seed=recipe.seed).images
    try:
        train, holdout = split_holdout(Split(index, labels[index]), recipe.holdout)
    except ValueError as exc:  # a user's dataset that declares no size: checked here, named here
        raise ValueError(f"recipe {recipe.name!r}: {exc}") from None
    return filter_classes(train, keep=recipe.keep_classes, drop=recipe.drop_classes).images, holdout.images


def transfer_split(recipe: Recipe, dataset: Dataset) -> tuple[Split, Split]:
    """The examples a recipe trains on, and its held-out slice (taken before class filters)."""
    train, holdout = transfer_indices(recipe, dataset)
    return dataset.train.take(train), dataset.train.take(holdout)


def make_optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD is fused (one pass over the weights instead of three: 0.81 -> 0.44 ms for the Hinton teacher's
    2.4M weights on 2 CPU cores); Adam stays foreach, its cost is noise next to the conv nets it trains."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay, fused=True)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    raise ValueError(f"{recipe.name}: unknown optimizer {recipe.optimizer!r}")


def lr_factor(recipe: Recipe, epoch_progress: float) -> float:
    """Multiplier of the base lr at a point in training measured in (fractional) epochs."""
    if recipe.warmup_epochs and epoch_progress < recipe.warmup_epochs:
        return epoch_progress / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "step":
        return recipe.step_gamma ** int(epoch_progress // recipe.step_every)
    rest = (epoch_progress - recipe.warmup_epochs) / max(recipe.epochs - recipe.warmup_epochs, 1e-9)
    if recipe.schedule == "linear":
        return max(0.0, 1.0 - rest)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))
    raise ValueError(f"{recipe.name}: unknown schedule {recipe.schedule!r}")


# Teacher outputs on every variant of the whole training split, shared by every student of that
# teacher in this process: the three MNIST KD students at 25 jitter variants cost one teacher pass
# over 1.5M images, not one per batch per epoch per student.
_TEACHER_TABLES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
TEACHER_TABLE_BYTES = 2 << 30  # larger tables (e.g. a wide MLP's hidden layer x 25 variants): teacher in the loop

# What each objective learns from; the feature map is the hidden representation unflattened, so a
# table stores only logits and hidden features, and one teacher pass fills both where both fit.
_TABLE_TAPS = ("logits", "hidden")


class _TeacherSignal:
    """What the student learns from: teacher logits, hidden features or feature maps.

    The teacher is fixed and every augmented image is one of `augmentation.variants` copies of a
    training image, so when that is no more passes than training would make (variants <= epochs)
    and the table fits in memory, the teacher's outputs on all variants of the whole training
    split are computed once and looked up by (variant, index); otherwise, once per batch.
    """

    def __init__(self, recipe: Recipe, teacher: TappedModel, dataset: Dataset, augmentation: Augmentation) -> None:
        self.tap, self.teacher = get_objective(recipe.objective).teacher_tap, teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.table: torch.Tensor | None = None
        train = dataset.train
        with torch.inference_mode():
            probe = teacher.forward_taps(normalize(train.images[:1], dataset.mean, dataset.std))
        self.shape = getattr(probe, self.tap).shape[1:]
        stored = "logits" if self.tap == "logits" else "hidden"
        fits = [t for t in _TABLE_TAPS
                if augmentation.variants * len(train) * getattr(probe, t)[0].numel() * 4 <= TEACHER_TABLE_BYTES]
        if augmentation.variants <= max(recipe.epochs, 1) and stored in fits:
            memo = _TEACHER_TABLES.setdefault(teacher, {})
            key = (augmentation.name, dataset.variant, dataset.checksum)
            if (stored, *key) not in memo:
                tables = teacher_table(teacher, train, dataset.mean, dataset.std, augmentation, fits)
                memo.update({(tap, *key): table for tap, table in tables.items()})
            self.table = memo[(stored, *key)]

    def batch(self, index: torch.Tensor, variant: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Teacher outputs for training images `index` (into the whole split) seen as `variant`."""
        if self.table is not None:
            return self.table[variant.to(self.table.device), index].view(-1, *self.shape)
        with torch.inference_mode():
            out = getattr(self.teacher.forward_taps(x.contiguous(memory_format=preferred_memory_format(self.teacher))),
                          self.tap)
        return out.clone()


def teacher_table(teacher: TappedModel, train: Split, mean: Sequence[float], std: Sequence[float],
                  augmentation: Augmentation, taps: Sequence[str]) -> dict[str, torch.Tensor]:
    """tap -> (variants, N, features): the teacher's taps on every variant of every image, in one pass."""
    fmt = preferred_memory_format(teacher)
    out: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    with torch.inference_mode():
        for v in range(augmentation.variants):
            parts: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
            for i in range(0, len(train), EVAL_BATCH):
                images = train.images[i:i + EVAL_BATCH]
                ids = torch.full((images.shape[0],), v, dtype=torch.int64)
                result = teacher.forward_taps(normalize(augmentation.apply(images, ids), mean, std)
                                              .contiguous(memory_format=fmt))
                for tap in taps:
                    parts[tap].append(getattr(result, tap).flatten(1))
            for tap in taps:
                out[tap].append(torch.cat(parts[tap]))
    return {tap: torch.stack(tables).clone() for tap, tables in out.items()}  # clone: leave inference mode


class TrainingRun:
    """One recipe's training state (model, optimizer, teacher signal, RNG) and its step.

    `fit` drives it epoch by epoch; the training-throughput benchmark times `step` directly, so
    what is benchmarked is exactly what trains.
    """

    def __init__(self, recipe: Recipe, dataset: Dataset, teacher: TappedModel | None = None) -> None:
        device = dataset.test.images.device
        self.recipe, self.dataset = recipe, dataset
        self.augmentation = get_augmentation(recipe.augment)
        self.origin, _ = transfer_indices(recipe, dataset)  # transfer set -> index into the training split
        self.train = dataset.train.take(self.origin)
        if len(self.train) == 0:
            raise ValueError(f"{recipe.name}: the transfer set is empty after filters")
        torch.manual_seed(recipe.seed)
        self.arch_kwargs = model_kwargs(recipe, dataset)
        self.model = build_model(recipe.arch, **self.arch_kwargs).to(device)
        self.memory_format = preferred_memory_format(self.model)
        self.model.to(memory_format=self.memory_format)
        self.params = list(self.model.parameters())
        self.objective = get_objective(recipe.objective)
        self.adapter: nn.Module | None = None
        self.signal: _TeacherSignal | None = None
        if self.objective.needs_teacher:
            if teacher is None:
                raise ValueError(f"{recipe.name}: objective {recipe.objective!r} needs a teacher model")
            self.signal = _TeacherSignal(recipe, teacher, dataset, self.augmentation)
            if self.objective.adapter is not None:
                self.adapter = self.objective.adapter(self._student_tap_shape(), tuple(self.signal.shape)).to(device)
                self.params += list(self.adapter.parameters())
        self.optimizer = make_optimizer(recipe, self.params)
        self.generator = torch.Generator().manual_seed(recipe.seed + 1)
        self.steps_per_epoch = math.ceil(len(self.train) / recipe.batch_size)
        self.model.train()

    def _student_tap_shape(self) -> tuple[int, ...]:
        """Shape of the student tap the objective's adapter maps (eval mode: no dropout, no RNG drawn)."""
        self.model.eval()
        with torch.no_grad():
            probe = self.model.forward_taps(torch.zeros(1, *self.dataset.input_shape, device=self.train.images.device))
        self.model.train()
        return tuple(getattr(probe, self.objective.adapter_tap).shape[1:])

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (index, uint8 images, labels)."""
        return iterate_batches(self.train, self.recipe.batch_size, self.generator)

    def step(self, epoch_progress: float, index: torch.Tensor, images: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        """lr schedule, on-device augmentation, loss, backward, (clip,) optimizer step; returns the loss."""
        recipe = self.recipe
        for group in self.optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(recipe, epoch_progress)
        variant = self.augmentation.draw(images.shape[0], self.generator)
        x = normalize(self.augmentation.apply(images, variant), self.dataset.mean, self.dataset.std)
        x = x.contiguous(memory_format=self.memory_format)
        target = self.signal.batch(self.origin[index], variant, x) if self.signal else None
        loss = self.objective.loss(recipe, self.model, x, labels, target, self.adapter)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(self.params, recipe.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach()


def fit(recipe: Recipe, dataset: Dataset, teacher: TappedModel | None = None,
        progress: ProgressFn | None = print_progress) -> TrainResult:
    """Train `recipe` on `dataset` (already on its device); returns the model, history, evaluation."""
    run = TrainingRun(recipe, dataset, teacher)
    history: list[EpochRecord] = []
    started = time.perf_counter()
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dataset.test.images.device)
        for step, (index, images, labels) in enumerate(run.batches()):
            loss_sum += run.step(epoch + step / run.steps_per_epoch, index, images, labels)
        evaluation = evaluate(run.model, dataset.test, dataset.mean, dataset.std)
        record = EpochRecord(epoch + 1, float(loss_sum) / run.steps_per_epoch, evaluation.errors,
                             time.perf_counter() - t0)
        history.append(record)
        if progress:
            progress(recipe, record, evaluation.total)
    run.model.eval()
    return TrainResult(run.model, recipe, evaluation, history, time.perf_counter() - started, run.arch_kwargs)
