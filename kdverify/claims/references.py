"""Committed reference samples: each gated trained claim's value over seeds, one file per numeric path.

Like MLPerf's reference convergence points: `kdverify reference --seeds 5` measures every gated claim
that trains a model at seed offsets 0..4 on this machine's numeric path (device, CPU kernels, threads)
and writes `kdverify/references/<path>.json` with its provenance (machine, kernels, threads, torch,
kdverify and trainer versions, the fingerprint of every recipe behind each claim, seconds). The
headroom test (`tests/test_headroom.py`) pools every path's sample per claim and fails when a
built-in gated claim is FRAGILE (`kdverify.claims.sampling`); the report shows the range beside each value.

A sample whose recipe fingerprints no longer match the recipes of today is stale: it is left out of
the pool and named, never silently used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdverify.claims.core import Claim
from kdverify.claims.sampling import Sample, is_fragile, summary
from kdverify.paths import REFERENCE_DIR
from kdverify.train.recipes import moves_with_seeds

FORMAT = 1


def recipe_fingerprints(claim: Claim, budget: str = "ci") -> dict[str, str]:
    """name -> fingerprint of every recipe a claim's value depends on (its recipes and their teachers)."""
    from kdverify.train.recipes import get_recipe

    found: dict[str, str] = {}
    pending = list(claim.recipes)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        recipe = get_recipe(name, budget)
        found[name] = recipe.fingerprint()
        if recipe.teacher:
            pending.append(recipe.teacher)
    return dict(sorted(found.items()))


CPU_MAKERS = {"intel": ("intel",), "amd": ("amd", "epyc", "ryzen"), "arm": ("arm", "aarch64", "apple", "neoverse")}


def cpu_maker(machine: str) -> str:
    """'intel', 'amd', 'arm' or '' from a machine description: the same kernels land apart under another maker's
    libraries (MKL picks its code paths per vendor), so a maker is part of a CPU path's name."""
    words = machine.lower()
    return next((maker for maker, marks in CPU_MAKERS.items() if any(m in words for m in marks)), "")


def path_name(settings: dict[str, Any], machine: str = "") -> str:
    """'cpu-avx512-2t-intel', 'cpu-avx2-1t-amd-det', 'cuda-nvidia-h200': the file name of a numeric path."""
    what = settings.get("cpu_kernels") or settings.get("gpu") or "unknown"
    name = f"{settings.get('device_type', 'cpu')}-{what}".lower().replace(" ", "-")
    if settings.get("device_type", "cpu") == "cpu":
        name += f"-{settings.get('threads', '?')}t" + (f"-{cpu_maker(machine)}" if cpu_maker(machine) else "")
    return name + ("-det" if settings.get("deterministic") else "")


@dataclass
class Reference:
    """One claim's pooled sample over every committed path whose recipes are today's."""

    claim_id: str
    values: list[float] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)  # path name -> how many values it gave
    stale: list[str] = field(default_factory=list)  # paths left out: recipes changed since they were measured
    variant: str = ""  # the data variant the values were measured on (the JPEG CIFAR-10 stand-in, say)

    def sample(self, op: str) -> Sample:
        return Sample(tuple(self.values), op)

    def to_dict(self, op: str) -> dict[str, Any]:
        base: dict[str, Any] = {"n": 0, "paths": self.paths, "stale": self.stale, "each_value": "one seed"}
        if self.values:
            base.update(summary(self.sample(op)))
        return base


def read_files(folder: Path = REFERENCE_DIR) -> list[dict[str, Any]]:
    """Every reference file of a folder, parsed (sorted by name, so pools are built in one order)."""
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: reference format {data.get('format')!r}, this kdverify reads {FORMAT}")
        files.append({**data, "file": path.name})
    return files


def load_references(claims: list[Claim], budget: str = "ci", folder: Path = REFERENCE_DIR) -> dict[str, Reference]:
    """Claim id -> its pooled reference over every path file, stale entries left out and named."""
    by_id = {c.id: c for c in claims}
    pooled: dict[str, Reference] = {}
    for data in read_files(folder):
        for claim_id, entry in data.get("claims", {}).items():
            claim = by_id.get(claim_id)
            if claim is None:
                continue
            ref = pooled.setdefault(claim_id, Reference(claim_id))
            dataset = entry.get("dataset", "")
            variant = data.get("provenance", {}).get("data", {}).get(dataset, {}).get("variant", "")
            if entry.get("recipes") != recipe_fingerprints(claim, budget) or (ref.values and variant != ref.variant):
                ref.stale.append(data["path"])  # other recipes, or other data than the pool so far
                continue
            ref.variant = variant
            ref.values += [float(v) for v in entry["values"]]
            ref.paths[data["path"]] = ref.paths.get(data["path"], 0) + len(entry["values"])
    return pooled


@dataclass(frozen=True)
class Headroom:
    """One built-in claim against its pooled reference: the row of the headroom table."""

    claim: Claim
    reference: Reference | None

    @property
    def status(self) -> str:
        """ok | FRAGILE | MISSING (no sample) | STALE (only stale samples)."""
        ref = self.reference
        if ref is None or not ref.values:
            return "STALE" if ref is not None and ref.stale else "MISSING"
        threshold = self.claim.threshold.for_data(ref.variant)
        sample = ref.sample(threshold.op)
        if not moves_with_seeds(self.claim):  # a pinned teacher: only the numeric path moves it
            return "ok" if threshold.passes(sample.worst()) else "FRAGILE"
        return "FRAGILE" if is_fragile(sample, threshold.passes, self.claim.judged_over) else "ok"

    def row(self) -> tuple[str, ...]:
        ref = self.reference
        threshold = self.claim.threshold.for_data(ref.variant if ref else "")
        if ref is None or not ref.values:
            return (self.claim.id, str(threshold), "-", "-", "0", "-", "-", self.status)
        s = ref.sample(threshold.op)
        bound = s.headroom_bound(self.claim.judged_over) if moves_with_seeds(self.claim) else s.worst()
        return (self.claim.id, str(threshold), f"{s.mean:.4g} +- {s.std:.2g}", f"{min(ref.values):.4g}-"
                f"{max(ref.values):.4g}", str(s.n), ", ".join(f"{p} ({n})" for p, n in ref.paths.items()),
                f"{bound:.4g}", self.status)


HEADROOM_COLUMNS = ("claim", "threshold", "mean +- std", "min-max", "n", "paths (values)", "bound", "status")


def headroom(claims: list[Claim], budget: str = "ci", folder: Path = REFERENCE_DIR) -> list[Headroom]:
    """Every gated claim that trains a model, against the committed reference samples."""
    refs = load_references(claims, budget, folder)
    gated = [c for c in claims if c.gated and not c.xfail and c.recipes]
    return [Headroom(c, refs.get(c.id)) for c in gated]


def headroom_table(rows: list[Headroom]) -> str:
    """Markdown table of the headroom rows."""
    lines = ["| " + " | ".join(HEADROOM_COLUMNS) + " |", "|" + " --- |" * len(HEADROOM_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r.row()) + " |" for r in rows])
