"""Training objectives by name: what a student learns from (which teacher tap), how, and any adapter.

An objective is data plus one loss function, registered like models and datasets
(`register_objective`, entry-point group `kdverify.objectives`). The trainer asks it for the
teacher tap it needs (computed once per fixed teacher, see `train._TeacherSignal`), builds its
adapter (e.g. the FitNets regressor) from the student's and teacher's tap shapes, and calls
`loss(recipe, model, x, labels, target, adapter)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdverify.registry import Registry
from kdverify.train.losses import cosine_loss, hint_loss, kd_loss
from kdverify.train.models import HintRegressor, TappedModel

Recipe = Any  # a recipes.Recipe (its temperature and soft_weight); not imported: recipes validate against us

LossFn = Callable[[Recipe, TappedModel, torch.Tensor, torch.Tensor, "torch.Tensor | None", "nn.Module | None"],
                  torch.Tensor]
TAPS = ("logits", "hidden", "feature_map")


@dataclass(frozen=True)
class Objective:
    """A named loss; `teacher_tap` None means it trains on hard labels alone (no teacher)."""

    name: str
    loss: LossFn
    teacher_tap: str | None = None  # one of TAPS: what the teacher provides
    adapter: Callable[[tuple[int, ...], tuple[int, ...]], nn.Module] | None = None  # (student, teacher) tap shapes
    adapter_tap: str = "feature_map"  # the student tap the adapter maps

    def __post_init__(self) -> None:
        if self.teacher_tap is not None and self.teacher_tap not in TAPS:
            raise ValueError(f"objective {self.name}: teacher_tap must be one of {', '.join(TAPS)}")

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_tap is not None


OBJECTIVES: Registry[Objective] = Registry(
    "objective", "kdverify.objectives",
    "register it with kdverify.train.objectives.register_objective in a module you --import, or install the package "
    "that provides it")


def register_objective(objective: Objective, replace: bool = False) -> Objective:
    return OBJECTIVES.register(objective.name, objective, replace=replace)


def get_objective(name: str) -> Objective:
    return OBJECTIVES.lookup(name)


def _mixed(recipe: Recipe, distill: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """soft_weight * distillation term + (1 - soft_weight) * hard-label cross-entropy."""
    return recipe.soft_weight * distill + (1 - recipe.soft_weight) * F.cross_entropy(logits, labels)


def _ce(recipe, model, x, labels, target, adapter):  # noqa: ANN001, ANN202
    return F.cross_entropy(model(x), labels)


def _kd(recipe, model, x, labels, target, adapter):  # noqa: ANN001, ANN202
    return kd_loss(model.forward_taps(x).logits, target, labels, recipe.temperature, recipe.soft_weight)


def _cosine(recipe, model, x, labels, target, adapter):  # noqa: ANN001, ANN202
    taps = model.forward_taps(x)
    return _mixed(recipe, cosine_loss(taps.hidden, target), taps.logits, labels)


def _hint(recipe, model, x, labels, target, adapter):  # noqa: ANN001, ANN202
    taps = model.forward_taps(x)
    return _mixed(recipe, hint_loss(adapter(taps.feature_map), target), taps.logits, labels)


for _objective in (
    Objective("ce", _ce),
    Objective("kd", _kd, teacher_tap="logits"),  # Hinton et al.: soft targets at temperature T
    Objective("cosine", _cosine, teacher_tap="hidden"),  # the tutorial's cosine loss on hidden representations
    Objective("hint", _hint, teacher_tap="feature_map", adapter=HintRegressor.for_shapes),  # FitNets
):
    register_objective(_objective)
