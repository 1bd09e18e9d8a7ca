"""Does a student recipe fit its teacher? Checked on the meta device before any data is loaded or trained.

A distillation objective joins two models through a tap (logits, hidden, feature map) and maybe an
adapter built from the two tap shapes. A mismatch (a FitNets hint from an MLP student to a conv
teacher's feature map) used to surface as a torch error after the data and the teacher had loaded.
Here both models, the teacher's tap, the adapter and the loss itself run on meta tensors: shapes are
checked, nothing is allocated, and the error is one line naming the recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdverify.errors import KdverifyError, first_line
from kdverify.train.models import build_model, shape_kwargs
from kdverify.train.objectives import get_objective


def _meta_model(arch: str, kwargs: dict[str, Any], input_shape: Sequence[int], classes: int) -> Any:
    return build_model(arch, **{**shape_kwargs(arch, input_shape, classes), **kwargs}).eval()


def check_distillation(recipe: Any, teacher_arch: str, teacher_kwargs: dict[str, Any], input_shape: Sequence[int],
                       classes: int, where: str = "") -> None:
    """One-line KdverifyError when `recipe`'s objective cannot join its student to this teacher on this data."""
    objective = get_objective(recipe.objective)
    if not objective.needs_teacher:
        return
    prefix = f"{where}: " if where else ""
    try:
        with torch.device("meta"):
            student = _meta_model(recipe.arch, recipe.arch_kwargs, input_shape, classes)
            teacher = _meta_model(teacher_arch, teacher_kwargs, input_shape, classes)
            x = torch.empty(2, *input_shape)
            labels = torch.zeros(2, dtype=torch.long)
            target = getattr(teacher.forward_taps(x), objective.teacher_tap)
            adapter = None
            if objective.adapter is not None:
                mine = getattr(student.forward_taps(x), objective.adapter_tap)
                adapter = objective.adapter(tuple(mine.shape[1:]), tuple(target.shape[1:]))
            objective.loss(recipe, student, x, labels, target, adapter)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        text = first_line(exc)[:200]
        raise KdverifyError(f"{prefix}recipe {recipe.name!r}: objective {recipe.objective!r} cannot join student "
                            f"{recipe.arch} to teacher {teacher_arch} on inputs {tuple(input_shape)}: {text}") from None


def check_recipe(recipe: Any, budget: str = "ci", where: str = "") -> bool:
    """Check a student recipe against its teacher recipe when the data's shape is declared (`register_dataset(...,
    shape=...)`); returns whether it could be checked now (else it is checked once the data is loaded)."""
    from kdverify.data import DATASET_SHAPES
    from kdverify.train.recipes import RECIPES, get_recipe

    if not recipe.teacher or recipe.dataset not in DATASET_SHAPES or recipe.teacher not in RECIPES:
        return False
    teacher = get_recipe(recipe.teacher, budget)
    shape, classes = DATASET_SHAPES[recipe.dataset]
    check_distillation(recipe, teacher.arch, teacher.arch_kwargs, shape, classes, where)
    return True
