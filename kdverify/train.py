"""One training loop for every objective (CE, KD, cosine, hint), evaluation, and logit-bias tools.

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
import torch.nn.functional as F
from torch import nn

from kdverify.cpu_memory import keep_freed_memory
from kdverify.data import Dataset, Split, augment, balanced_subset, filter_classes, iterate_batches, normalize, \
    split_holdout
from kdverify.losses import cosine_loss, hint_loss, kd_loss, pool_to_width
from kdverify.models import HintRegressor, TappedModel, Taps, build_model
from kdverify.recipes import Recipe

TRAINER_VERSION = "3"  # bump when a change alters trained weights for the same recipe (part of cache keys)
EVAL_BATCH = 2000


@dataclass
class Evaluation:
    """Errors on one split: total, per class, and the confusion matrix (rows = true class)."""

    confusion: torch.Tensor  # int64 (C, C)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> "Evaluation":
        c = logits.shape[1]
        pred = logits.argmax(dim=1)
        confusion = torch.bincount(labels * c + pred, minlength=c * c).view(c, c).cpu()
        return cls(confusion)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def errors(self) -> int:
        return self.total - int(self.confusion.diag().sum())

    @property
    def error_rate(self) -> float:
        return self.errors / max(self.total, 1)

    @property
    def per_class_errors(self) -> list[int]:
        return (self.confusion.sum(dim=1) - self.confusion.diag()).tolist()

    @property
    def per_class_total(self) -> list[int]:
        return self.confusion.sum(dim=1).tolist()

    def to_dict(self) -> dict:
        return {"errors": self.errors, "total": self.total, "error_rate": self.error_rate,
                "per_class_errors": self.per_class_errors, "confusion": self.confusion.tolist()}


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


ProgressFn = Callable[[Recipe, EpochRecord, int], None]


def progress_line(recipe: Recipe, record: EpochRecord, test_total: int) -> str:
    """Epoch, loss, test errors, time per epoch and time left, on one line."""
    left = (recipe.epochs - record.epoch) * record.seconds
    return (f"[{recipe.name} seed {recipe.seed}] epoch {record.epoch:>4}/{recipe.epochs}  loss {record.loss:.4f}  "
            f"test errors {record.test_errors} ({100 * record.test_errors / test_total:.2f}%)  "
            f"{record.seconds:.1f}s/epoch  ETA {time.strftime('%H:%M:%S', time.gmtime(left))}")


def print_progress(recipe: Recipe, record: EpochRecord, test_total: int) -> None:
    """Default progress: one line per epoch on stderr."""
    print(progress_line(recipe, record, test_total), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits of the whole split in large batches, model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    out = [model(normalize(split.images[i:i + batch_size], mean, std)) for i in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)


def evaluate(model: nn.Module, split: Split, mean: Sequence[float], std: Sequence[float]) -> Evaluation:
    return Evaluation.from_logits(predict_logits(model, split, mean, std), split.labels)


# ---------------------------------------------------------------- logit-bias adjustment


def shift_logits(logits: torch.Tensor, classes: Sequence[int], delta: float) -> torch.Tensor:
    """What shifting the output bias of `classes` by `delta` does to the logits."""
    shifted = logits.clone()
    shifted[:, list(classes)] += delta
    return shifted


def shift_bias(model: TappedModel, classes: Sequence[int], delta: float) -> None:
    """Shift the output-layer bias of `classes` by `delta`, in place (Hinton's +3.5 on the 3)."""
    with torch.no_grad():
        model.output_layer.bias[list(classes)] += delta


def search_bias_shift(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                      grid: torch.Tensor | None = None) -> tuple[float, int]:
    """The bias shift of `classes` that minimises errors on (logits, labels), and those errors.

    Ties go to the smallest |shift|. Runs on precomputed logits, so a fine grid costs nothing.
    """
    if grid is None:
        grid = torch.arange(-15.0, 15.0001, 0.1)
    grid = grid[grid.abs().argsort(stable=True)]
    best_delta, best_errors = 0.0, None
    for delta in grid.tolist():
        errors = int((shift_logits(logits, classes, delta).argmax(1) != labels).sum())
        if best_errors is None or errors < best_errors:
            best_delta, best_errors = round(delta, 4), errors
    return best_delta, int(best_errors)


# ---------------------------------------------------------------- training


def transfer_split(recipe: Recipe, dataset: Dataset) -> tuple[Split, Split]:
    """The examples a recipe trains on, and its held-out slice (taken before class filters)."""
    train = dataset.train
    if recipe.train_subset:
        train = balanced_subset(train, recipe.train_subset, len(dataset.classes))
    train, holdout = split_holdout(train, recipe.holdout)
    return filter_classes(train, keep=recipe.keep_classes, drop=recipe.drop_classes), holdout


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


# Teacher outputs over a fixed (un-augmented) transfer set, shared by every student of that
# teacher: the tutorial's three students at three seeds then cost one teacher pass, not nine.
_TEACHER_OUTPUTS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()


class _TeacherSignal:
    """What the student learns from: teacher logits, pooled hidden features or feature maps.

    Without augmentation the teacher sees the same images every epoch, so its taps are computed
    once for the whole transfer set; with augmentation, once per batch.
    """

    def __init__(self, recipe: Recipe, teacher: TappedModel, student: TappedModel, train: Split,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.recipe, self.teacher = recipe, teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        with torch.inference_mode():
            probe = student.forward_taps(normalize(train.images[:2], mean, std))
        self.student_width = probe.hidden.shape[1]
        self.cached = None
        if recipe.augment == "none":
            memo = _TEACHER_OUTPUTS.setdefault(teacher, {})
            key = (recipe.objective, self.student_width, recipe.dataset, recipe.train_subset, recipe.holdout,
                   recipe.keep_classes, recipe.drop_classes, len(train), tuple(mean), tuple(std))
            if key not in memo:
                with torch.inference_mode():
                    parts = [self._select(teacher.forward_taps(normalize(train.images[i:i + EVAL_BATCH], mean, std)))
                             for i in range(0, len(train), EVAL_BATCH)]
                memo[key] = torch.cat(parts)  # outside inference mode: an ordinary tensor
            self.cached = memo[key]

    def _select(self, taps: Taps) -> torch.Tensor:
        if self.recipe.objective == "kd":
            return taps.logits
        if self.recipe.objective == "cosine":
            return pool_to_width(taps.hidden, self.student_width)
        return taps.feature_map

    def batch(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[index]
        with torch.inference_mode():
            taps = self.teacher.forward_taps(x)
        return self._select(taps).clone()


class TrainingRun:
    """One recipe's training state (model, optimizer, teacher signal, RNG) and its step.

    `fit` drives it epoch by epoch; the training-throughput benchmark times `step` directly, so
    what is benchmarked is exactly what trains.
    """

    def __init__(self, recipe: Recipe, dataset: Dataset, teacher: TappedModel | None = None) -> None:
        device = dataset.test.images.device
        if device.type == "cpu":
            keep_freed_memory()  # no page faults on the buffers every step frees and re-allocates
        self.recipe, self.dataset = recipe, dataset
        self.train, _ = transfer_split(recipe, dataset)
        if len(self.train) == 0:
            raise ValueError(f"{recipe.name}: the transfer set is empty after filters")
        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe.arch, **recipe.arch_kwargs).to(device)
        self.params = list(self.model.parameters())
        self.regressor: nn.Module | None = None
        self.signal: _TeacherSignal | None = None
        if recipe.objective != "ce":
            if teacher is None:
                raise ValueError(f"{recipe.name}: objective {recipe.objective!r} needs a teacher model")
            self.signal = _TeacherSignal(recipe, teacher, self.model, self.train, dataset.mean, dataset.std)
            if recipe.objective == "hint":
                self.regressor = HintRegressor().to(device)
                self.params += list(self.regressor.parameters())
        self.optimizer = make_optimizer(recipe, self.params)
        self.generator = torch.Generator().manual_seed(recipe.seed + 1)
        self.steps_per_epoch = math.ceil(len(self.train) / recipe.batch_size)
        self.model.train()

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of (index, uint8 images, labels)."""
        return iterate_batches(self.train, self.recipe.batch_size, self.generator)

    def step(self, epoch_progress: float, index: torch.Tensor, images: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        """lr schedule, on-device augmentation, loss, backward, (clip,) optimizer step; returns the loss."""
        recipe = self.recipe
        for group in self.optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(recipe, epoch_progress)
        x = normalize(augment(images, recipe.augment, self.generator), self.dataset.mean, self.dataset.std)
        loss = _objective(recipe, self.model, self.regressor, x, labels, self.signal, index)
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
    return TrainResult(run.model, recipe, evaluation, history, time.perf_counter() - started)


def _objective(recipe: Recipe, model: TappedModel, regressor: nn.Module | None, x: torch.Tensor,
               labels: torch.Tensor, signal: _TeacherSignal | None, index: torch.Tensor) -> torch.Tensor:
    if recipe.objective == "ce":
        return F.cross_entropy(model(x), labels)
    taps = model.forward_taps(x)
    target = signal.batch(index, x)
    if recipe.objective == "kd":
        return kd_loss(taps.logits, target, labels, recipe.temperature, recipe.soft_weight)
    if recipe.objective == "cosine":
        distill = cosine_loss(taps.hidden, target)
    else:
        distill = hint_loss(regressor(taps.feature_map), target)
    return recipe.soft_weight * distill + (1 - recipe.soft_weight) * F.cross_entropy(taps.logits, labels)
