"""Trained models shared through an on-disk cache, so each teacher is trained once.

A cache entry is an ordinary kdverify checkpoint whose name carries a key: the hash of the
recipe's canonical form, the data variant and checksum, the trainer's version and (for a
student) its teacher's key. A changed recipe or trainer gets a new key, so stale entries are
never read; an entry that fails to load, or whose stored key disagrees, is retrained.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdverify.checkpoint import CheckpointError, checkpoint_payload, load_checkpoint, save_checkpoint
from kdverify.data import Dataset, default_cache_dir
from kdverify.models import TappedModel
from kdverify.recipes import Recipe, get_recipe
from kdverify.train import TRAINER_VERSION, EpochRecord, Evaluation, ProgressFn, TrainResult, fit, print_progress


@dataclass
class Trained:
    """A trained model with what the claims need to judge it."""

    model: TappedModel
    recipe: Recipe
    key: str
    evaluation: Evaluation
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0  # training time when it was trained (0 for nothing new)
    from_cache: bool = False


def result_metrics(result: TrainResult, key: str) -> dict[str, Any]:
    """What a checkpoint records about its training: errors, confusion, curve, time, cache key."""
    return {
        "cache_key": key,
        "test": result.evaluation.to_dict(),
        "history": [vars(r) for r in result.history],
        "train_seconds": result.seconds,
    }


def trained_from_metrics(model: TappedModel, recipe: Recipe, metrics: dict[str, Any]) -> Trained:
    confusion = torch.tensor(metrics["test"]["confusion"], dtype=torch.int64)
    history = [EpochRecord(**h) for h in metrics.get("history", [])]
    return Trained(model, recipe, metrics["cache_key"], Evaluation(confusion), history,
                   float(metrics.get("train_seconds", 0.0)), from_cache=True)


class ModelCache:
    """Get-or-train for recipes of one budget on one dataset per name."""

    def __init__(self, root: str | os.PathLike | None, datasets: dict[str, Dataset], budget: str = "ci",
                 progress: ProgressFn | None = print_progress, teacher_seed_offset: int = 0) -> None:
        self.root = Path(root) if root else default_cache_dir() / "models"
        self.datasets, self.budget, self.progress = datasets, budget, progress
        self.teacher_seed_offset = teacher_seed_offset  # calibration runs re-seed the teachers too
        self._memory: dict[str, Trained] = {}

    def teacher_of(self, recipe: Recipe) -> Recipe | None:
        if not recipe.teacher:
            return None
        teacher = get_recipe(recipe.teacher, self.budget)
        return teacher.with_seed(teacher.seed + self.teacher_seed_offset)

    def key(self, recipe: Recipe) -> str:
        dataset = self.datasets[recipe.dataset]
        parts = [recipe.fingerprint(), dataset.variant, dataset.checksum, TRAINER_VERSION]
        if recipe.teacher:
            parts.append(self.key(self.teacher_of(recipe)))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def path(self, recipe: Recipe) -> Path:
        return self.root / f"{recipe.name}-seed{recipe.seed}-{self.key(recipe)}.pt"

    def trained(self) -> list[Trained]:
        """Everything trained or loaded so far (for reports)."""
        return list(self._memory.values())

    def get(self, recipe: Recipe) -> Trained:
        """The trained model for `recipe`, from memory, disk, or by training it (teacher first)."""
        key = self.key(recipe)
        if key in self._memory:
            return self._memory[key]
        dataset = self.datasets[recipe.dataset]
        device = dataset.test.images.device
        path = self.path(recipe)
        trained = None
        if path.is_file():
            try:
                ckpt = load_checkpoint(path, map_location=device)
                if ckpt.metrics.get("cache_key") == key:
                    trained = trained_from_metrics(ckpt.model.to(device), recipe, ckpt.metrics)
            except (CheckpointError, KeyError, TypeError, ValueError):
                trained = None  # corrupted or foreign entry: retrain, never trust it
        if trained is None:
            teacher = self.get(self.teacher_of(recipe)).model if recipe.teacher else None
            result = fit(recipe, dataset, teacher=teacher, progress=self.progress)
            payload = checkpoint_payload(result.model, recipe.arch, recipe.arch_kwargs, dataset,
                                         recipe.to_dict(), result_metrics(result, key))
            save_checkpoint(path, payload, force=True)
            trained = Trained(result.model, recipe, key, result.evaluation, result.history, result.seconds)
        self._memory[key] = trained
        return trained
