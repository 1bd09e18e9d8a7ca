"""Trained models shared through an on-disk cache, so each teacher is trained once.

A cache entry is an ordinary kdverify checkpoint whose name carries a key: the hash of the
recipe's canonical form, the data variant and checksum, the trainer's version, what changes the
bits of a trained model besides its recipe (device type and kernels, torch version, determinism
mode) and (for a student) the sha256 of its teacher's weights. A changed recipe, trainer,
machine type or teacher gets a new key, so stale or foreign entries are never read; an entry that
fails to load, whose stored key disagrees, or whose weights no longer hash to what was recorded,
is retrained.

Filling an entry happens under an inter-process lock on that entry (`kdverify.locks`): N
processes sharing a cache folder (pytest-xdist workers, two sessions, machines on a shared
filesystem) train each key once; the others wait, then load what the holder wrote.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kdverify.checkpoint import CheckpointError, checkpoint_payload, load_checkpoint, machine_description, \
    save_checkpoint, state_digest
from kdverify.data import Dataset, default_cache_dir
from kdverify.compat import check_distillation
from kdverify.determinism import cache_key_settings, numeric_settings
from kdverify.errors import KdverifyError
from kdverify.locks import exclusive
from kdverify.models import TappedModel
from kdverify.pinned import load_pinned, read_manifest
from kdverify.recipes import PINNED_BUDGETS, PINNED_TEACHERS, Recipe, get_recipe
from kdverify.train import TRAINER_VERSION, EpochRecord, Evaluation, ProgressFn, TrainResult, evaluate, fit, \
    print_progress


class NotCached(KdverifyError):
    """A model the cache does not hold, asked for where nothing may be trained."""


@dataclass
class ModelRecord:
    """What reports say about a model, as plain data: how it was obtained, on what, and how it scored.

    It crosses processes (pytest-xdist workers -> controller) where the model itself does not.
    """

    recipe: Recipe
    key: str
    evaluation: Evaluation
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0  # training time when it was trained (also for cached and pinned models)
    source: str = "trained"  # trained | cache | pinned
    weights: str = ""  # sha256 of the weights (state_digest): what a student's key names its teacher by
    machine: str = ""  # where it was trained
    settings: dict[str, Any] = field(default_factory=dict)  # torch, device type, kernels, threads, determinism

    @property
    def provenance(self) -> str:
        """One phrase for reports: pinned teacher + sha256 prefix, trained now, or from cache."""
        how = {"trained": "trained now", "cache": "from cache", "pinned": "pinned"}[self.source]
        return f"{self.recipe.name} s{self.recipe.seed}: {how} ({self.weights[:12]}, {self.seconds:.0f} s to train)"

    def to_wire(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "key": self.key, "confusion": self.evaluation.confusion.tolist(),
                "history": [vars(h) for h in self.history], "seconds": self.seconds, "source": self.source,
                "weights": self.weights, "machine": self.machine, "settings": dict(self.settings)}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "ModelRecord":
        return cls(Recipe.from_dict(d["recipe"]), d["key"], Evaluation(torch.tensor(d["confusion"])),
                   [EpochRecord(**h) for h in d["history"]], d["seconds"], d["source"], d["weights"], d["machine"],
                   d["settings"])


@dataclass
class Trained(ModelRecord):
    """A trained model with what the claims need to judge it, and how it was obtained."""

    model: TappedModel | None = None

    def record(self) -> ModelRecord:
        return ModelRecord(**{k: v for k, v in vars(self).items() if k != "model"})


def result_metrics(result: TrainResult, key: str) -> dict[str, Any]:
    """What a checkpoint records about its training: errors, confusion, curve, time, cache key, weights."""
    return {
        "cache_key": key,
        "weights_sha256": state_digest(result.model),
        "test": result.evaluation.to_dict(),
        "history": [vars(r) for r in result.history],
        "train_seconds": result.seconds,
        "machine": machine_description(next(result.model.parameters()).device),
        "trainer_version": TRAINER_VERSION,
        "settings": numeric_settings(next(result.model.parameters()).device),
    }


def _recorded_training(metrics: dict[str, Any]) -> tuple[list[EpochRecord], float]:
    """The curve and training time a checkpoint recorded when it was trained."""
    return [EpochRecord(**h) for h in metrics.get("history", [])], float(metrics.get("train_seconds", 0.0))


class ModelCache:
    """Get-or-train for recipes of one budget; in `ci`, teachers come pinned with the package.

    A student's key names its teacher by the teacher's weights, so a student of the pinned teacher
    and one of the same teacher trained by the `paper` budget are the same entry.
    """

    def __init__(self, root: str | os.PathLike | None, datasets: dict[str, Dataset], budget: str = "ci",
                 progress: ProgressFn | None = print_progress, teacher_seed_offset: int = 0,
                 say: Callable[[str], None] | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "models"
        self.datasets, self.budget, self.progress = datasets, budget, progress
        self.teacher_seed_offset = teacher_seed_offset  # calibration runs re-seed trained teachers too
        self._memory: dict[str, Trained] = {}
        self._say_to = say  # where waits for a lock and retrains of corrupt entries are announced
        self.train_missing = True  # False: a model not in the cache raises NotCached (reference --cached-only)

    def uses_pinned(self, recipe: Recipe) -> bool:
        return self.budget in PINNED_BUDGETS and recipe.name in PINNED_TEACHERS

    def teacher_of(self, recipe: Recipe) -> Recipe | None:
        if not recipe.teacher:
            return None
        teacher = get_recipe(recipe.teacher, self.budget)
        if teacher.dataset != recipe.dataset:
            raise KdverifyError(f"recipe {recipe.name} distils on {recipe.dataset!r} from {teacher.name}, which "
                                f"trains on {teacher.dataset!r}: the teacher must learn the student's data")
        return teacher if self.uses_pinned(teacher) else teacher.with_seed(teacher.seed + self.teacher_seed_offset)

    def key(self, recipe: Recipe, teacher: Trained | None = None) -> str:
        dataset = self.datasets[recipe.dataset]
        parts = [recipe.fingerprint(), dataset.variant, dataset.checksum, TRAINER_VERSION,
                 cache_key_settings(dataset.test.images.device)]
        if recipe.teacher:
            if teacher is None:
                raise ValueError(f"{recipe.name}: the key of a student names its teacher's weights")
            parts.append(teacher.weights)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def path(self, recipe: Recipe, key: str) -> Path:
        return self.root / f"{recipe.name}-seed{recipe.seed}-{key}.pt"

    def trained(self) -> list[Trained]:
        """Everything trained or loaded so far (for reports)."""
        return list(self._memory.values())

    def get(self, recipe: Recipe) -> Trained:
        """The model for `recipe`: pinned, from memory, from disk, or trained now (teacher first)."""
        if self.uses_pinned(recipe):
            return self._pinned(recipe)
        if recipe.teacher:  # the student fits its teacher (shapes, taps, adapter) before the teacher is trained
            teacher_recipe, dataset = self.teacher_of(recipe), self.datasets[recipe.dataset]
            check_distillation(recipe, teacher_recipe.arch, teacher_recipe.arch_kwargs,
                               tuple(dataset.test.images.shape[1:]), len(dataset.classes))
        teacher = self.get(self.teacher_of(recipe)) if recipe.teacher else None
        key = self.key(recipe, teacher)
        if key in self._memory:
            return self._memory[key]
        dataset = self.datasets[recipe.dataset]
        device = dataset.test.images.device
        path = self.path(recipe, key)
        trained = self._load(path, recipe, key, device) if path.is_file() else None
        if trained is None:
            with exclusive(path, f"{recipe.name} seed {recipe.seed}", say=self._say):
                trained = self._load(path, recipe, key, device) if path.is_file() else None  # filled while we waited
                if trained is None:
                    if not self.train_missing:
                        raise NotCached(f"{recipe.name} seed {recipe.seed} is not in the cache {self.root}")
                    if path.exists():
                        self._say(f"cache entry {path.name} is unreadable or corrupt: retraining it")
                    trained = self._train(recipe, key, path, dataset, teacher)
        self._memory[key] = trained
        return trained

    def _train(self, recipe: Recipe, key: str, path: Path, dataset: Dataset, teacher: Trained | None) -> Trained:
        result = fit(recipe, dataset, teacher=teacher.model if teacher else None, progress=self.progress)
        metrics = result_metrics(result, key)
        payload = checkpoint_payload(result.model, recipe.arch, result.arch_kwargs, dataset, recipe.to_dict(), metrics)
        try:
            save_checkpoint(path, payload, force=True)  # atomic rename: a reader of the old entry keeps its inode
        except CheckpointError as exc:  # a full disk, a folder gone read-only: the session keeps the model
            self._say(f"{exc}; {recipe.name} seed {recipe.seed} is used from memory this session (not cached: it "
                      "trains again next time)")
        return Trained(recipe, key, result.evaluation, result.history, result.seconds, "trained",
                       metrics["weights_sha256"], metrics["machine"], metrics["settings"], model=result.model)

    def _say(self, message: str) -> None:
        if self._say_to is not None:
            self._say_to(f"kdverify: {message}")
        else:
            print(f"kdverify: {message}", file=sys.stderr, flush=True)

    def adopt(self, checkpoint: str | os.PathLike) -> Path:
        """Make a model trained elsewhere by `kdverify train` / `distill` (a long run in the background, in
        parts) this budget's cache entry for its recipe; refused when its recipe is not this budget's, or,
        for a student, when it was not distilled from the teacher this cache holds for its recipe."""
        ckpt = load_checkpoint(checkpoint)
        recipe = Recipe.from_dict(ckpt.recipe)
        expected = get_recipe(recipe.name, self.budget).with_seed(recipe.seed)
        if recipe.fingerprint() != expected.fingerprint():
            raise CheckpointError(f"{checkpoint}: trained with recipe {recipe.fingerprint()}, but {recipe.name} "
                                  f"in the {self.budget} budget is {expected.fingerprint()}")
        dataset = self.datasets[recipe.dataset]
        if ckpt.dataset_variant != dataset.variant:
            raise CheckpointError(f"{checkpoint}: trained on {ckpt.dataset_variant}, this data is {dataset.variant}")
        teacher = self._cached_teacher(checkpoint, recipe, ckpt.metrics) if recipe.teacher else None
        key = self.key(recipe, teacher)
        metrics = {"machine": machine_description(), **ckpt.metrics,  # older checkpoints did not record it
                   "cache_key": key, "weights_sha256": state_digest(ckpt.model)}
        path = self.path(recipe, key)
        with exclusive(path, f"{recipe.name} seed {recipe.seed}", say=self._say):
            save_checkpoint(path, checkpoint_payload(ckpt.model, ckpt.arch, ckpt.arch_kwargs, dataset, ckpt.recipe,
                                                     metrics), force=True)
        return path

    def _cached_teacher(self, checkpoint: str | os.PathLike, recipe: Recipe, metrics: dict[str, Any]) -> Trained:
        """The teacher a student to adopt names, which must already be here and be the one it learnt from."""
        teacher_recipe = self.teacher_of(recipe)
        if not self.uses_pinned(teacher_recipe):
            teacher_key = self.key(teacher_recipe)
            if not self.path(teacher_recipe, teacher_key).is_file():
                raise CheckpointError(f"{checkpoint}: its teacher {teacher_recipe.name} is not in the cache; "
                                      "cache-add the teacher first")
        teacher = self.get(teacher_recipe)
        if metrics.get("teacher_weights_sha256") != teacher.weights:
            raise CheckpointError(f"{checkpoint}: it was not distilled from the cached {teacher_recipe.name} "
                                  f"(teacher weights {str(metrics.get('teacher_weights_sha256'))[:12]} vs "
                                  f"{teacher.weights[:12]})")
        return teacher

    def _load(self, path: Path, recipe: Recipe, key: str, device: torch.device) -> Trained | None:
        """A cache entry, or None when it is unreadable, foreign or its weights no longer match its record."""
        try:
            ckpt = load_checkpoint(path, map_location=device, accept_unsealed=True)  # numbers re-measured below
            metrics = ckpt.metrics
            if metrics.get("cache_key") != key or metrics.get("weights_sha256") != state_digest(ckpt.model):
                return None
            model = ckpt.model.to(device)
            dataset = self.datasets[recipe.dataset]
            # the verdict's numbers come from the verified weights, never from the entry's stored metrics,
            # which its weights digest does not cover (one flipped bit there would change a verdict)
            evaluation = evaluate(model, dataset.test, dataset.mean, dataset.std)
            return Trained(recipe, key, evaluation, *_recorded_training(metrics), "cache", metrics["weights_sha256"],
                           metrics.get("machine", ""), dict(metrics.get("settings", {})), model=model)
        except (CheckpointError, KeyError, TypeError, ValueError):
            return None  # corrupted or foreign entry: retrain, never trust it

    def _pinned(self, recipe: Recipe) -> Trained:
        """The shipped checkpoint, evaluated now on this machine's data (its stored numbers are not trusted)."""
        memo = f"pinned:{recipe.name}"
        if memo not in self._memory:
            dataset = self.datasets[recipe.dataset]
            device = dataset.test.images.device
            ckpt = load_pinned(recipe, device)
            model = ckpt.model.to(device)
            metrics = ckpt.metrics
            self._memory[memo] = Trained(
                recipe, ckpt.sha256[:16], evaluate(model, dataset.test, dataset.mean, dataset.std),
                *_recorded_training(metrics), "pinned", state_digest(model),
                metrics.get("machine") or read_manifest()[recipe.name]["machine"], dict(metrics.get("settings", {})),
                model=model)
        return self._memory[memo]
