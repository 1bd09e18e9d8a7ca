"""The session object behind the claims: datasets, the model cache, and the verdicts so far.

The pytest plugin only forwards options to a `ClaimsLab` and hands it to tests; `kdverify
calibrate` uses the same object without pytest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from kdverify.cache import ModelCache, Trained
from kdverify.claims import Claim, Verdict, judge, measure
from kdverify.data import Dataset, default_cache_dir, load_dataset
from kdverify.errors import DataError
from kdverify.recipes import get_recipe
from kdverify.train import ProgressFn, print_progress


class ClaimsLab:
    """Trains (or loads) what claims need, once per session, and records verdicts."""

    def __init__(self, data_root: str | os.PathLike | None = None, budget: str = "ci", device: str = "auto",
                 cache_dir: str | os.PathLike | None = None, seed_offset: int = 0,
                 progress: ProgressFn | None = print_progress) -> None:
        self.data_root, self.budget, self.seed_offset = data_root, budget, seed_offset
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
        self._datasets: dict[str, Dataset] = {}
        self._data_errors: dict[str, str] = {}
        self.cache = ModelCache(self.cache_dir, self._datasets, budget, progress, teacher_seed_offset=seed_offset)
        self.verdicts: list[Verdict] = []
        self._touched: dict[str, Trained] = {}  # models the claim being checked asked for

    def dataset(self, name: str) -> Dataset:
        """Load once; a missing dataset raises the same DataError every time it is asked for."""
        if name in self._data_errors:
            raise DataError(self._data_errors[name])
        if name not in self._datasets:
            try:
                self._datasets[name] = load_dataset(name, self.data_root, self.device)
            except DataError as exc:
                self._data_errors[name] = str(exc)
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

    def check(self, claim: Claim) -> Verdict:
        """Measure a claim, judge it at this budget, and record the verdict."""
        started = time.perf_counter()
        dataset_name = self._dataset_of(claim)
        variant = self.dataset(dataset_name).variant if dataset_name else ""
        self._touched = {}
        measurement = measure(claim, self)
        verdict, threshold = judge(claim, measurement, variant)
        provenance = "; ".join(self._touched) or "no training"
        result = Verdict(claim, self.budget, measurement.value, threshold, verdict, measurement.detail,
                         time.perf_counter() - started, str(self.device), variant, provenance)
        self.verdicts.append(result)
        return result

    def skip(self, claim: Claim, reason: str) -> Verdict:
        """Record a claim that could not be measured here (no data): shown as SKIP with the reason."""
        result = Verdict(claim, self.budget, None, claim.threshold, "SKIP", reason, 0.0, str(self.device), "")
        self.verdicts.append(result)
        return result

    def _dataset_of(self, claim: Claim) -> str | None:
        return get_recipe(claim.recipes[0], self.budget).dataset if claim.recipes else None

    def trained_models(self) -> list[Trained]:
        """Everything trained or loaded this session (for pictures)."""
        return self.cache.trained()
