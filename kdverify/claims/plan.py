"""Every model a claims run needs, known before the first one trains: a small DAG, teachers first.

`kdverify plan` and `pytest -m claims --kd-plan` print it (which models, whether the cache holds them,
their expected cost from recorded training times); an executor (`kdverify.cache.executors`) trains what is
missing in this order, as many at once as its workers allow.

Which models a claim needs follows from the claim as data: every recipe it names, at each seed of a
sample (`--kd-seeds`: students only, teachers fixed), and, for a value averaged over seeds (the tutorial's
mean-of-3 claims), each averaged seed of a student; each student brings its teacher.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Iterable

from kdverify.cache.spec import ModelSpec, PlannedModel, resolve
from kdverify.claims.core import Claim
from kdverify.train.recipes import get_recipe, is_teacher, moves_with_seeds


def claim_specs(claim: Claim, budget: str, seeds: int = 1, offset: int = 0) -> list[ModelSpec]:
    """The models one claim's verdict rests on at `seeds` sample seeds (teachers first, no repeats)."""
    found: dict[tuple[str, int], ModelSpec] = {}
    sample = range(seeds if seeds > 1 and moves_with_seeds(claim) else 1)
    unit = claim.one_seed() if seeds > 1 else claim
    for k in sample:
        for name in claim.recipes:
            base = get_recipe(name, budget).seed
            averaged = 1 if is_teacher(name) else unit.seeds_averaged
            for j in range(averaged):
                spec = resolve(name, budget, seed=base + j, offset=offset, student_offset=k)
                for s in spec.lineage():
                    found.setdefault((s.name, s.seed), s)
    return list(found.values())


def make_plan(claims: Iterable[Claim], budget: str, seeds: int = 1, offset: int = 0) -> list[PlannedModel]:
    """The union of every claim's models, each once, in an order where a teacher precedes its students."""
    planned: dict[tuple[str, int], PlannedModel] = {}
    for claim in claims:
        for spec in claim_specs(claim, budget, seeds, offset):
            item = planned.setdefault((spec.name, spec.seed), PlannedModel(spec))
            if claim.id not in item.claims:
                item.claims.append(claim.id)
    return list(planned.values())


def models_beyond_the_gate(claims: Iterable[Claim], budget: str, seeds: int = 1) -> dict[str, list[ModelSpec]]:
    """claim id -> the models only claims this run cannot gate need (`Claim.gates_at`), for every such claim
    that needs any: what `--kd-gate-only` leaves untrained. Pinned teachers cost nothing and are never listed."""
    claims = list(claims)
    gating = {(s.name, s.seed) for c in claims if c.gates_at(seeds) for s in claim_specs(c, budget, seeds)}
    beyond: dict[str, list[ModelSpec]] = {}
    for claim in claims:
        if claim.gates_at(seeds):
            continue
        extra = [s for s in claim_specs(claim, budget, seeds) if not s.pinned and (s.name, s.seed) not in gating]
        if extra:
            beyond[claim.id] = extra
    return beyond


def recorded_seconds_per_epoch(folder: Path | None = None) -> dict[str, float]:
    """recipe name -> median training seconds per epoch, from the committed reference samples: a claim whose
    value rests on one trained recipe (its teachers pinned) records that recipe's training time per seed."""
    from kdverify.claims.references import REFERENCE_DIR

    per_epoch: dict[str, list[float]] = {}
    for path in sorted((folder or REFERENCE_DIR).glob("*.json")):
        data = json.loads(path.read_text())
        for claim_id, entry in data.get("claims", {}).items():
            trained = [n for n in entry.get("recipes", {}) if not is_teacher(n)]
            if len(trained) != 1 or not entry.get("train_seconds"):
                continue
            try:
                epochs = get_recipe(trained[0], data.get("budget", "ci")).epochs
            except KeyError:
                continue
            per_epoch.setdefault(trained[0], []).extend(s / epochs for s in entry["train_seconds"] if s > 0)
    return {name: statistics.median(v) for name, v in per_epoch.items() if v}


def pinned_seconds(name: str) -> float | None:
    from kdverify.cache.manifest import read_manifest

    entry = read_manifest().get(name)
    return float(entry["train_seconds"]) / entry["recipe"]["epochs"] if entry and "train_seconds" in entry else None


def estimate_seconds(plan: list[PlannedModel]) -> None:
    """Fill each model's expected training time: recorded seconds per epoch x this budget's epochs (a teacher
    never timed by a reference sample uses its pinned checkpoint's recorded time)."""
    per_epoch = recorded_seconds_per_epoch()
    for item in plan:
        if item.spec.pinned:
            item.seconds = 0.0
            continue
        rate = per_epoch.get(item.spec.name) or pinned_seconds(item.spec.name)
        item.seconds = round(rate * item.spec.recipe.epochs, 1) if rate else None


def format_plan(plan: list[PlannedModel], budget: str, seeds: int = 1) -> str:
    """A table a person reads before committing hours: model, seed, teacher, cached, expected cost, claims."""
    rows = [("model", "seed", "teacher", "cached", "expected", "needed by")]
    for item in plan:
        teacher = f"{item.spec.teacher.name} s{item.spec.teacher.seed}" if item.spec.teacher else "-"
        cached = "pinned" if item.spec.pinned else {True: "yes", False: "no", None: "?"}[item.cached]
        cost = "-" if not item.to_train else "?" if item.seconds is None else _duration(item.seconds)
        needed = ", ".join(item.claims[:3]) + (f" +{len(item.claims) - 3}" if len(item.claims) > 3 else "")
        rows.append((item.spec.name, str(item.spec.seed), teacher, cached, cost, needed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    todo = [i for i in plan if i.to_train]
    known = sum(i.seconds or 0 for i in todo)
    unknown = sum(1 for i in todo if i.seconds is None)
    lines.append(f"\n{budget} budget, {seeds} seed(s): {len(plan)} models, {len(todo)} to train, expected "
                 f"{_duration(known)} of training at the speed the reference samples recorded "
                 "(kdverify/references: 2 CPU cores)"
                 + (f" plus {unknown} never timed" if unknown else ""))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
