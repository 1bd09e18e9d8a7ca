"""Which model, at which seed, from which teacher, in which cache file: answered once, by `resolve`.

Every path from a recipe name to a trained model (the claims lab, the cache, the CLI, `calibrate`,
`reference`, the benchmarks, a plan of a whole run) goes through `resolve`, so the rules live here only:
a budget's pinned teacher is never trained or re-seeded; `offset` moves every trained model (a
calibration at another seed); `student_offset` moves students only (the seeds of a sample, teachers
fixed); a student's teacher is resolved by the same rules, before the student.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterator

from kdverify.errors import KdverifyError
from kdverify.train.recipes import PINNED_BUDGETS, PINNED_TEACHERS, Recipe, get_recipe, is_teacher


@dataclass(frozen=True)
class ModelSpec:
    """One model a run needs: this budget's recipe at its final seed, and the spec of its teacher."""

    recipe: Recipe
    budget: str
    teacher: "ModelSpec | None" = None
    pinned: bool = False  # the budget ships this model (kdverify/teachers/): loaded, never trained

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"

    def key(self, data_variant: str, data_checksum: str, trainer: str, settings: str,
            teacher_weights: str | None = None) -> str:
        """The cache key: recipe, data, trainer, what changes the bits besides the recipe (device type,
        kernels, torch, determinism) and, for a student, its teacher's weights sha256."""
        parts = [self.recipe.fingerprint(), data_variant, data_checksum, trainer, settings]
        if self.teacher is not None:
            if not teacher_weights:
                raise ValueError(f"{self.name}: the key of a student names its teacher's weights")
            parts.append(teacher_weights)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def file_name(self, key: str) -> str:
        return f"{self.name}-seed{self.seed}-{key}.pt"

    def lineage(self) -> Iterator["ModelSpec"]:
        """The teacher chain first, then this model: the order they must exist in."""
        if self.teacher is not None:
            yield from self.teacher.lineage()
        yield self


def entry_pattern(recipe_name: str) -> re.Pattern[str]:
    """Cache file names of any seed of one recipe (hinton-student-kd is not hinton-student-kd-no3)."""
    return re.compile(rf"^{re.escape(recipe_name)}-seed\d+-[0-9a-f]+\.pt$")


def resolve(recipe: str, budget: str, seed: int | None = None, offset: int = 0, student_offset: int = 0) -> ModelSpec:
    """The model a recipe name means in a budget; `seed` replaces the recipe's own seed before the offsets."""
    base = get_recipe(recipe, budget)
    if budget in PINNED_BUDGETS and base.name in PINNED_TEACHERS:
        return ModelSpec(base, budget, None, pinned=True)
    moved = offset + (0 if is_teacher(base.name) else student_offset)
    seeded = base.with_seed((base.seed if seed is None else seed) + moved)
    teacher = None
    if seeded.teacher:
        teacher = resolve(seeded.teacher, budget, offset=offset)
        if teacher.recipe.dataset != seeded.dataset:
            raise KdverifyError(f"recipe {seeded.name} distils on {seeded.dataset!r} from {teacher.name}, which "
                                f"trains on {teacher.recipe.dataset!r}: the teacher must learn the student's data")
    return ModelSpec(seeded, budget, teacher)


@dataclass
class PlannedModel:
    """One model of a plan: its spec, the claims that need it, and what the plan knows about it."""

    spec: ModelSpec
    claims: list[str] = field(default_factory=list)
    cached: bool | None = None  # None: not known (its data is not here)
    seconds: float | None = None  # expected training seconds (None: never timed; 0: pinned)

    @property
    def to_train(self) -> bool:
        return not self.spec.pinned and not self.cached
