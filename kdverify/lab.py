"""The session object behind the claims: datasets, the model cache, and the verdicts so far.

The pytest plugin only forwards options to a `ClaimsLab` and hands it to tests; `kdverify
calibrate` uses the same object without pytest. Under pytest-xdist every worker has its own lab;
they share the model cache on disk (locked per entry) and the controller gathers their verdicts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

import kdverify
from kdverify.cache import ModelCache, ModelRecord, Trained
from kdverify.checkpoint import machine_description
from kdverify.claims import Claim, Verdict, judge, measure
from kdverify.data import Dataset, default_cache_dir, load_dataset
from kdverify.determinism import numeric_settings, set_deterministic
from kdverify.errors import DataError
from kdverify.recipes import get_recipe
from kdverify.train import TRAINER_VERSION, ProgressFn, print_progress


def resolve_lab_device(device: str = "auto", worker: int = 0) -> torch.device:
    """auto = CUDA when present; with several GPUs, pytest-xdist worker k trains on cuda:(k mod n)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.device_count() > 1:
        device = f"cuda:{worker % torch.cuda.device_count()}"
    return torch.device(device)


def claim_group(claim: Claim, budget: str = "paper") -> str | None:
    """The teacher a claim's first recipe distils from (else that recipe): claims of one group share a
    process under pytest-xdist, so a teacher's outputs are computed by one worker for all its students."""
    try:
        recipe = get_recipe(claim.recipes[0], budget) if claim.recipes else None
    except KeyError:
        return None
    return (recipe.teacher or recipe.name) if recipe else None


class ClaimsLab:
    """Trains (or loads) what claims need, once per session, and records verdicts."""

    def __init__(self, data_root: str | os.PathLike | None = None, budget: str = "ci", device: str = "auto",
                 cache_dir: str | os.PathLike | None = None, seed_offset: int = 0,
                 progress: ProgressFn | None = print_progress, deterministic: bool = False, worker: int = 0,
                 say: Callable[[str], None] | None = None) -> None:
        self.data_root, self.budget, self.seed_offset = data_root, budget, seed_offset
        if deterministic:
            set_deterministic()
        self.device = resolve_lab_device(device, worker)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
        self._datasets: dict[str, Dataset] = {}
        self._data_errors: dict[str, DataError] = {}
        self.cache = ModelCache(self.cache_dir, self._datasets, budget, progress, teacher_seed_offset=seed_offset,
                                say=say)
        self.verdicts: list[Verdict] = []
        self._touched: dict[str, Trained] = {}  # models the claim being checked asked for
        self.last_models: list[ModelRecord] = []  # the models behind the last verdict (reports, xdist)

    def dataset(self, name: str) -> Dataset:
        """Load once; a missing or corrupt dataset raises the same DataError every time it is asked for."""
        if name in self._data_errors:
            raise self._data_errors[name]
        if name not in self._datasets:
            try:
                self._datasets[name] = load_dataset(name, self.data_root, self.device)
            except DataError as exc:
                self._data_errors[name] = exc
                raise
        return self._datasets[name]

    def trained(self, recipe: str, seed: int | None = None) -> Trained:
        """The trained model of a recipe at this budget (seed: override, before the lab's offset)."""
        base = get_recipe(recipe, self.budget)
        self.dataset(base.dataset)
        model = self.cache.get(base.with_seed((base.seed if seed is None else seed) + self.seed_offset))
        teacher = self.cache.get(self.cache.teacher_of(model.recipe)) if base.teacher else None
        for m in (teacher, model):
            if m is not None:
                self._touched.setdefault(m.provenance, m)
        return model

    def environment(self, dataset: Dataset | None = None) -> dict[str, object]:
        """What a verdict was measured with: versions, machine, threads, determinism, data checksum."""
        env: dict[str, object] = {"kdverify": kdverify.__version__, "trainer": TRAINER_VERSION,
                                  "machine": machine_description(self.device), **numeric_settings(self.device)}
        if dataset is not None:
            env.update(data_variant=dataset.variant, data_checksum=dataset.checksum)
        return env

    def check(self, claim: Claim) -> Verdict:
        """Measure a claim, judge it at this budget, and record the verdict."""
        started = time.perf_counter()
        dataset_name = self._dataset_of(claim)
        dataset = self.dataset(dataset_name) if dataset_name else None
        self._touched = {}
        measurement = measure(claim, self)
        verdict, threshold = judge(claim, measurement, dataset.variant if dataset else "")
        provenance = "; ".join(self._touched) or "no training"
        result = Verdict(claim, self.budget, measurement.value, threshold, verdict, measurement.detail,
                         time.perf_counter() - started, str(self.device), dataset.variant if dataset else "",
                         provenance, self.environment(dataset))
        self.last_models = [m.record() for m in self._touched.values()]
        self.verdicts.append(result)
        return result

    def not_measured(self, claim: Claim, reason: str, verdict: str = "SKIP") -> Verdict:
        """Record a claim that could not be measured: SKIP (no data, not asked for) or ERROR (corrupt or
        required data missing), with the reason."""
        result = Verdict(claim, self.budget, None, claim.threshold, verdict, reason, 0.0, str(self.device), "",
                         environment=self.environment())
        self.last_models = []
        self.verdicts.append(result)
        return result

    def _dataset_of(self, claim: Claim) -> str | None:
        return get_recipe(claim.recipes[0], self.budget).dataset if claim.recipes else None

    def trained_models(self) -> list[Trained]:
        """Everything trained or loaded this session (for pictures)."""
        return self.cache.trained()
