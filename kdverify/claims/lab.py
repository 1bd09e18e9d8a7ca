"""The session object behind the claims: datasets, the model cache, and the verdicts so far.

The pytest plugin only forwards options to a `ClaimsLab` and hands it to tests; `kdverify
calibrate` uses the same object without pytest. Under pytest-xdist every worker has its own lab;
they share the model cache on disk (locked per entry) and the controller gathers their verdicts.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import kdverify
from kdverify.cache.checkpoint import machine_description
from kdverify.cache.records import ModelRecord, Trained
from kdverify.cache.spec import ModelSpec, PlannedModel, resolve
from kdverify.cache.store import ModelCache
from kdverify.claims.core import Claim, Measurement, Verdict, judge
from kdverify.claims.measures import measure
from kdverify.claims.references import Reference, load_references
from kdverify.claims.sampling import Sample
from kdverify.data import Dataset, load_dataset
from kdverify.errors import DataError
from kdverify.paths import model_cache_dir
from kdverify.startup import resolve_device
from kdverify.train.determinism import numeric_settings, set_deterministic
from kdverify.train.loop import TRAINER_VERSION, ProgressFn, print_progress
from kdverify.train.recipes import get_recipe, moves_with_seeds


def _builtin(claim_id: str) -> Claim | None:
    from kdverify.claims.paper import CLAIMS_BY_ID

    return CLAIMS_BY_ID.get(claim_id)


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
        self.device = resolve_device(device, worker)
        self.cache_dir = model_cache_dir(cache_dir)
        self._datasets: dict[str, Dataset] = {}
        self._data_errors: dict[str, DataError] = {}
        self.say = say  # live lines for a person (lock waits, retrains, remote trainings); None: stderr
        self.cache = ModelCache(self.cache_dir, self._datasets, budget, progress, say=say)
        self.references: dict[str, Reference] | None = None  # loaded on first use (kdverify.claims.references)
        self._sample_offset = 0  # the seed offset of the sample being measured (--kd-seeds): students only
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
        spec = self.spec(recipe, seed)
        self.dataset(spec.recipe.dataset)
        model = self.cache.get(spec)
        for m in [self.cache.get(s) for s in spec.lineage() if s is not spec] + [model]:
            self._touched.setdefault(m.provenance, m)
        return model

    def spec(self, recipe: str, seed: int | None = None) -> ModelSpec:
        """What `trained` would fetch: the lab's seed offset on every trained model, the sample's on students."""
        return resolve(recipe, self.budget, seed, offset=self.seed_offset, student_offset=self._sample_offset)

    def environment(self, dataset: Dataset | None = None) -> dict[str, object]:
        """What a verdict was measured with: versions, machine, threads, determinism, data checksum."""
        env: dict[str, object] = {"kdverify": kdverify.__version__, "trainer": TRAINER_VERSION,
                                  "machine": machine_description(self.device), **numeric_settings(self.device)}
        if dataset is not None:
            env.update(data_variant=dataset.variant, data_checksum=dataset.checksum)
        return env

    def measure_at(self, claim: Claim, offset: int) -> Measurement:
        """The claim's value with every student (not teacher) `offset` seeds further: one point of a sample.
        The models it used are in `models_used` afterwards."""
        self._sample_offset, self._touched = offset, {}
        try:
            return measure(claim, self)
        finally:
            self._sample_offset = 0

    @property
    def models_used(self) -> list[Trained]:
        """The models the last measurement asked for (teachers included)."""
        return list(self._touched.values())

    def check(self, claim: Claim, seeds: int = 1) -> Verdict:
        """Measure a claim, judge it at this budget, and record the verdict.

        seeds > 1: the claim at one seed, at seed offsets 0..seeds-1 (teachers fixed), judged by the 95 %
        confidence bound on the mean; a claim that trains only teachers (or nothing) stays at n = 1.
        """
        started = time.perf_counter()
        dataset_name = self.dataset_of(claim)
        dataset = self.dataset(dataset_name) if dataset_name else None
        self._touched = {}
        sample = None
        if seeds > 1 and moves_with_seeds(claim):
            unit = claim.one_seed()
            points = [self.measure_at(unit, k) for k in range(seeds)]
            sample = Sample(tuple(p.value for p in points), claim.threshold.op)
            detail = "; ".join(f"s+{k}: {p.value:.6g}" + (f" ({p.detail})" if p.detail else "")
                               for k, p in enumerate(points))
            measurement = Measurement(sample.mean, f"mean of {seeds} seeds; {detail}")
        else:
            measurement = measure(claim, self)
            if claim.min_seeds > 1 and claim.gated and not claim.xfail:
                measurement = Measurement(measurement.value, "; ".join(filter(None, (
                    measurement.detail, f"gated from {claim.min_seeds} seeds (--kd-seeds {claim.min_seeds}): one "
                                        "run spreads wider than the tolerance"))))
        verdict, threshold = judge(claim, measurement, dataset.variant if dataset else "", sample)
        provenance = "; ".join(self._touched) or "no training"
        result = Verdict(claim, self.budget, measurement.value, threshold, verdict, measurement.detail,
                         time.perf_counter() - started, str(self.device), dataset.variant if dataset else "",
                         provenance, self.environment(dataset))
        if sample is not None:
            result.n, result.seeds, result.values = sample.n, list(range(seeds)), list(sample.values)
            result.mean, result.bound = sample.mean, sample.confidence_bound()
        elif moves_with_seeds(claim):
            result.seeds = [0]
        self._attach_reference(result)
        self.last_models = [m.record() for m in self._touched.values()]
        return result

    def _attach_reference(self, verdict: Verdict) -> None:
        """The committed reference sample of a built-in claim beside its value, and whether the value lies
        outside the sample's range (only comparable for a one-seed value: the sample's points are one seed each).
        A claim that was not measured still shows the range: what this run would have had beside it."""
        if _builtin(verdict.claim.id) != verdict.claim:
            return  # a user's claim (even one sharing a built-in id): the committed samples are not about it
        if self.references is None:
            from kdverify.claims.paper import CLAIMS

            self.references = load_references(CLAIMS, self.budget)
        ref = self.references.get(verdict.claim.id)
        if ref is None:
            return
        verdict.reference = ref.to_dict(verdict.threshold.op)
        if ref.values and verdict.measured is not None and verdict.n == 1 and verdict.claim.seeds_averaged == 1:
            verdict.outside_reference = not min(ref.values) <= verdict.measured <= max(ref.values)

    def not_measured(self, claim: Claim, reason: str, verdict: str = "SKIP") -> Verdict:
        """Record a claim that could not be measured: SKIP (no data, not asked for) or ERROR (corrupt or
        required data missing), with the reason."""
        result = Verdict(claim, self.budget, None, claim.threshold, verdict, reason, 0.0, str(self.device), "",
                         environment=self.environment())
        self._attach_reference(result)
        self.last_models = []
        return result

    def mark_cached(self, plan: list[PlannedModel]) -> None:
        """Fill a plan's `cached` column from this lab's cache (models of data that is not here: unknown)."""
        for item in plan:
            try:
                self.dataset(item.spec.recipe.dataset)
            except DataError:
                item.cached = None
                continue
            item.cached = self.cache.holds(item.spec)

    def dataset_of(self, claim: Claim) -> str | None:
        return get_recipe(claim.recipes[0], self.budget).dataset if claim.recipes else None
