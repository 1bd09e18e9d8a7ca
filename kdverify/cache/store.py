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

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch

from kdverify.cache.checkpoint import (
    CheckpointError,
    checkpoint_from_bytes,
    checkpoint_payload,
    load_checkpoint,
    machine_description,
    save_checkpoint,
    state_digest,
)
from kdverify.cache.manifest import read_manifest
from kdverify.cache.pinned import load_pinned
from kdverify.cache.records import Trained
from kdverify.cache.spec import ModelSpec, entry_pattern, resolve
from kdverify.data import Dataset
from kdverify.errors import KdverifyError
from kdverify.io import atomic_write_bytes
from kdverify.locks import exclusive
from kdverify.paths import model_cache_dir
from kdverify.train.compat import check_distillation
from kdverify.train.determinism import cache_key_settings, numeric_settings
from kdverify.train.loop import TRAINER_VERSION, EpochRecord, ProgressFn, TrainResult, fit, print_progress
from kdverify.train.metrics import evaluate
from kdverify.train.recipes import Recipe

if TYPE_CHECKING:
    from kdverify.cache.spec import PlannedModel


class NotCached(KdverifyError):
    """A model the cache does not hold, asked for where nothing may be trained."""


def trained_payload(result: TrainResult, recipe: Recipe, dataset: Dataset, key: str,
                    teacher_weights: str | None = None, **recorded: Any) -> dict[str, Any]:
    """The checkpoint of a training, for a cache entry, `kdverify train`/`distill` and a Ray task alike
    (`recorded`: more it should record, e.g. the node that trained it)."""
    metrics = {**result_metrics(result, key), **recorded}
    if teacher_weights:
        metrics["teacher_weights_sha256"] = teacher_weights  # `cache-add` checks a student against its teacher
    return checkpoint_payload(result.model, recipe.arch, result.arch_kwargs, dataset, recipe.to_dict(), metrics)


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


class Executor(Protocol):
    """Trains what a plan is missing elsewhere (kdverify.cache.executors); the cache asks it before training a model."""

    def start(self, plan: list[PlannedModel], cache: ModelCache) -> None: ...

    def fetch(self, spec: ModelSpec) -> tuple[bytes, str] | None: ...

    def holds_lock(self, spec: ModelSpec) -> bool: ...

    def release(self, spec: ModelSpec) -> None: ...

    def close(self, cancel: bool = False) -> None: ...


class ModelCache:
    """Get-or-train for recipes of one budget; in `ci`, teachers come pinned with the package.

    A student's key names its teacher by the teacher's weights, so a student of the pinned teacher
    and one of the same teacher trained by the `paper` budget are the same entry.
    """

    def __init__(self, root: str | os.PathLike | None, datasets: dict[str, Dataset], budget: str = "ci",
                 progress: ProgressFn | None = print_progress, say: Callable[[str], None] | None = None) -> None:
        self.root = model_cache_dir(root)
        self.datasets, self.budget, self.progress = datasets, budget, progress
        self._memory: dict[str, Trained] = {}
        self._say_to = say  # where waits for a lock and retrains of corrupt entries are announced
        self.executor: Executor | None = None  # trains ahead elsewhere (executors); asked before training
        self.train_missing = True  # False: a model not in the cache raises NotCached (reference --cached-only)

    def key(self, spec: ModelSpec, teacher_weights: str | None = None) -> str:
        dataset = self.datasets[spec.recipe.dataset]
        return spec.key(dataset.variant, dataset.checksum, TRAINER_VERSION,
                        cache_key_settings(dataset.test.images.device), teacher_weights)

    def holds(self, spec: ModelSpec) -> bool:
        """Whether the spec would come without training (pinned, or an entry on disk under its key), asked
        without loading a model: a plan's 'cached' column. Its dataset must be in `datasets`."""
        return spec.pinned or self.entry_of(spec) is not None

    def entry_of(self, spec: ModelSpec) -> Path | None:
        """The file of the spec's entry when the cache holds one (a trained teacher's entry names the key)."""
        if spec.teacher is not None and not spec.teacher.pinned:
            entry = self.entry_of(spec.teacher)
            try:
                weights = load_checkpoint(entry, accept_unsealed=True).metrics.get("weights_sha256") if entry else None
            except CheckpointError:
                weights = None
            path = self.path(spec, self.key(spec, weights)) if weights else None
        else:
            path = self.planned_path(spec)
        return path if path is not None and path.is_file() else None

    def path(self, spec: ModelSpec, key: str) -> Path:
        return self.root / spec.file_name(key)

    def entries(self, recipe_name: str) -> list[Path]:
        """The entries of any seed of a recipe, newest first (the benchmarks take whichever is there)."""
        if not self.root.is_dir():
            return []
        pattern = entry_pattern(recipe_name)
        found = [p for p in self.root.iterdir() if pattern.match(p.name) and p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def get(self, spec: ModelSpec) -> Trained:
        """The model of a spec (`kdverify.cache.spec.resolve`): pinned, from memory, from disk, or trained now
        (teacher first)."""
        if spec.pinned:
            return self._pinned(spec.recipe)
        recipe = spec.recipe
        if spec.teacher is not None:  # the student fits its teacher (shapes, taps, adapter) before it is trained
            dataset = self.datasets[recipe.dataset]
            check_distillation(recipe, spec.teacher.recipe.arch, spec.teacher.recipe.arch_kwargs,
                               tuple(dataset.test.images.shape[1:]), len(dataset.classes))
        teacher = self.get(spec.teacher) if spec.teacher is not None else None
        key = self.key(spec, teacher.weights if teacher else None)
        if key in self._memory:
            return self._memory[key]
        dataset = self.datasets[recipe.dataset]
        device = dataset.test.images.device
        path = self.path(spec, key)
        trained = self._load(path, recipe, key, device) if path.is_file() else None
        if trained is None and self.executor is not None:
            trained = self._from_executor(spec, key, path, dataset)
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
        payload = trained_payload(result, recipe, dataset, key, teacher.weights if teacher else None)
        metrics = payload["metrics"]
        try:
            save_checkpoint(path, payload, force=True)  # atomic rename: a reader of the old entry keeps its inode
        except CheckpointError as exc:  # a full disk, a folder gone read-only: the session keeps the model
            self._say(f"{exc}; {recipe.name} seed {recipe.seed} is used from memory this session (not cached: it "
                      "trains again next time)")
        return Trained(recipe, key, result.evaluation, result.history, result.seconds, "trained",
                       metrics["weights_sha256"], metrics["machine"], metrics["settings"], model=result.model)

    def planned_path(self, spec: ModelSpec) -> Path | None:
        """The entry file a spec will have, when its key is known before anything trains (no teacher, or a
        pinned one): an executor locks it for the whole remote training, as a local fill does."""
        if spec.pinned or spec.recipe.dataset not in self.datasets:
            return None
        if spec.teacher is None:
            return self.path(spec, self.key(spec))
        weights = read_manifest()[spec.teacher.name].get("weights_sha256") if spec.teacher.pinned else None
        return self.path(spec, self.key(spec, weights)) if weights else None

    def _from_executor(self, spec: ModelSpec, key: str, path: Path, dataset: Dataset) -> Trained | None:
        """The model an executor trained elsewhere, written as this cache's entry under the entry's lock (held
        by the executor since submission where the key was known then, else taken now)."""
        assert self.executor is not None
        remote = self.executor.fetch(spec)
        if remote is None:
            return None
        try:
            held = self.executor.holds_lock(spec)
            with contextlib.nullcontext() if held else exclusive(path, spec.label, say=self._say):
                if path.is_file():  # another session filled it meanwhile: theirs is as good, keep one
                    loaded = self._load(path, spec.recipe, key, dataset.test.images.device)
                    if loaded is not None:
                        return loaded
                return self._from_task(remote, spec, key, path, dataset)
        finally:
            self.executor.release(spec)

    def _from_task(self, remote: tuple[bytes, str], spec: ModelSpec, key: str, path: Path,
                   dataset: Dataset) -> Trained:
        """A model another process trained (a Ray task): verified (seal, weights sha256, cache key) before it
        becomes this cache's entry, and measured here from its weights like any entry."""
        blob, where = remote
        device = dataset.test.images.device
        ckpt = checkpoint_from_bytes(blob, f"the Ray task's checkpoint of {spec.label}", device)
        if ckpt.metrics.get("cache_key") != key:
            raise KdverifyError(f"the Ray task of {spec.label} trained under cache key {ckpt.metrics.get('cache_key')}"
                                f", this session expects {key}: the worker has other data, torch or kernels")
        try:
            atomic_write_bytes(path, blob)
        except OSError as exc:
            self._say(f"cannot write {path} ({exc}); {spec.label} is used from memory this session")
        model = ckpt.model.to(device)
        metrics = ckpt.metrics
        return Trained(spec.recipe, key, evaluate(model, dataset.test, dataset.mean, dataset.std),
                       *_recorded_training(metrics), "trained", metrics["weights_sha256"],
                       f"{metrics.get('machine', '')}, {where}", dict(metrics.get("settings", {})), model=model)

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
        spec = resolve(recipe.name, self.budget, seed=recipe.seed)
        expected = spec.recipe
        if spec.pinned:
            raise CheckpointError(f"{checkpoint}: {recipe.name} is pinned in the {self.budget} budget (kdverify/"
                                  "teachers/); a trained one is adopted in the paper budget (`--budget paper`)")
        if recipe.fingerprint() != expected.fingerprint():
            raise CheckpointError(f"{checkpoint}: trained with recipe {recipe.fingerprint()}, but {recipe.name} "
                                  f"in the {self.budget} budget is {expected.fingerprint()}")
        dataset = self.datasets[recipe.dataset]
        if ckpt.dataset_variant != dataset.variant:
            raise CheckpointError(f"{checkpoint}: trained on {ckpt.dataset_variant}, this data is {dataset.variant}")
        teacher = self._cached_teacher(checkpoint, spec, ckpt.metrics) if spec.teacher else None
        key = self.key(spec, teacher.weights if teacher else None)
        metrics = {"machine": machine_description(), **ckpt.metrics,  # older checkpoints did not record it
                   "cache_key": key, "weights_sha256": state_digest(ckpt.model)}
        path = self.path(spec, key)
        with exclusive(path, f"{recipe.name} seed {recipe.seed}", say=self._say):
            save_checkpoint(path, checkpoint_payload(ckpt.model, ckpt.arch, ckpt.arch_kwargs, dataset, ckpt.recipe,
                                                     metrics), force=True)
        return path

    def _cached_teacher(self, checkpoint: str | os.PathLike, spec: ModelSpec, metrics: dict[str, Any]) -> Trained:
        """The teacher a student to adopt names, which must already be here and be the one it learnt from."""
        teacher_spec = spec.teacher
        assert teacher_spec is not None
        teacher_recipe = teacher_spec.recipe
        if not teacher_spec.pinned:
            if not self.path(teacher_spec, self.key(teacher_spec)).is_file():
                raise CheckpointError(f"{checkpoint}: its teacher {teacher_recipe.name} is not in the cache; "
                                      "cache-add the teacher first")
        teacher = self.get(teacher_spec)
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
