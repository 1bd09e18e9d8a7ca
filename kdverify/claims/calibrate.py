"""Measure every claim at several seeds and show how far each sits inside its threshold.

`kdverify calibrate --seeds 0 --seeds 3 --seeds 6` trains what every claim needs (teachers included, unless the
budget pins them) at each seed offset and prints, per claim, the values, their min/max/mean, the
threshold (the published number with its stated tolerance; it never comes from these runs) and
the worst seed's margin to it, and the statistical verdict over the seeds (`kdverify.claims.sampling`: the
one-sided 95% bound on the mean, as `--kd-seeds N` judges). It is the tool for designing recipes with
headroom; `measure_reference` (`kdverify reference`) writes the committed samples the headroom test reads.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdverify.claims.core import Claim, Threshold
from kdverify.claims.sampling import Sample, statistical_verdict
from kdverify.errors import KdverifyError
from kdverify.io import atomic_write_bytes

ERROR_UNITS = ("errors", "errors on 3s", "% errors")  # the margin is also shown as % of the threshold
HEADROOM = 0.10  # an error count should stay this far (relative) inside its threshold


def seed_stats(values: Sequence[float], threshold: Threshold, unit: str) -> dict[str, Any]:
    """Min/max/mean over seeds and the worst seed's margin to the threshold (negative: outside)."""
    worst = min(threshold.margin(v) for v in values)
    stats: dict[str, Any] = {"min": min(values), "max": max(values), "mean": sum(values) / len(values),
                             "threshold": str(threshold), "rule": threshold.rule, "worst_margin": worst}
    if unit in ERROR_UNITS and threshold.value:
        stats["worst_margin_pct"] = 100 * worst / abs(threshold.value)
    sample = Sample(tuple(float(v) for v in values), threshold.op)
    stats.update(std=sample.std, bound=sample.confidence_bound(), n=sample.n,
                 statistical_verdict=statistical_verdict(sample, threshold.passes))
    return stats


def format_stats(claim_id: str, values: Sequence[float], stats: dict[str, Any]) -> str:
    """One line per claim: values per seed, min/max/mean, threshold and rule, worst-seed margin."""
    def g(x: float) -> str:
        return f"{x:.4g}"

    text = (f"{claim_id:<40} values {', '.join(map(g, values))}  min {g(stats['min'])} max {g(stats['max'])} "
            f"mean {g(stats['mean'])}  threshold {stats['threshold']} ({stats['rule'] or 'no rule'})  "
            f"worst-seed margin {g(stats['worst_margin'])}")
    if "worst_margin_pct" in stats:
        pct = stats["worst_margin_pct"]
        text += f" ({pct:.1f}% of the threshold{'' if pct >= 100 * HEADROOM else '; less headroom than 10%'})"
    if stats.get("n", 1) > 1:
        text += (f"  std {g(stats['std'])}, 95% bound on the mean {g(stats['bound'])}: "
                 f"{stats['statistical_verdict']} over {stats['n']} seeds")
    return text


def claims_from(reference: str) -> list[Claim]:
    """`module:NAME` -> the list of Claims it names (the paper's by default, a user's own with --import)."""
    module_name, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or "CLAIMS")
    except (ImportError, AttributeError) as exc:
        raise KdverifyError(f"--claims {reference}: {exc}") from None
    claims = list(found) if isinstance(found, (list, tuple)) else []
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise KdverifyError(f"--claims {reference}: not a list of kdverify.claims.core.Claim")
    return claims


def calibrate(seeds: Sequence[int], budget: str = "ci", data_root: str | None = None, cache_dir: str | None = None,
              out: Path | None = None, claim_ids: Sequence[str] | None = None, force: bool = False,
              claims: Sequence[Claim] | None = None) -> dict:
    """Measure the claims at each seed offset; print them and their margins, optionally save as JSON."""
    from kdverify.claims.lab import ClaimsLab

    if claims is None:
        from kdverify.claims.paper import CLAIMS as claims
    if out is not None and Path(out).exists() and not force:
        raise KdverifyError(f"{out} exists; pass --force to overwrite it")
    unknown = sorted(set(claim_ids or ()) - {c.id for c in claims})
    if unknown:
        raise KdverifyError(f"unknown claim id(s) {', '.join(unknown)}; known: {', '.join(c.id for c in claims)}")
    claims = [c for c in claims if c.recipes and (not claim_ids or c.id in claim_ids)]
    results: dict[str, dict[str, Any]] = {c.id: {"values": [], "details": [], "verdicts": []} for c in claims}
    thresholds: dict[str, Threshold] = {}
    for seed in seeds:
        lab = ClaimsLab(data_root, budget, "auto", cache_dir, seed_offset=seed)
        for claim in claims:
            v = lab.check(claim)
            thresholds[claim.id] = v.threshold  # the one for this data variant
            for key, value in (("values", v.measured), ("details", v.detail), ("verdicts", v.verdict)):
                results[claim.id][key].append(value)
            print(f"seed {seed}  {claim.id:<40} {v.measured:>10.4g}  {v.verdict:<6} {v.detail}", flush=True)
    print(f"\n{budget} budget, seed offsets {', '.join(map(str, seeds))}:", flush=True)
    for claim in claims:
        result = results[claim.id]
        if result["values"]:
            result.update(seed_stats(result["values"], thresholds[claim.id], claim.unit))
            print(format_stats(claim.id, result["values"], result), flush=True)
    if out is not None:
        atomic_write_bytes(Path(out), json.dumps({"seeds": list(seeds), "budget": budget, "claims": results},
                                                 indent=2).encode())
    return results


def measure_reference(seeds: int, budget: str = "ci", data_root: str | None = None, cache_dir: str | None = None,
                      out: Path | None = None, force: bool = False, claim_ids: Sequence[str] | None = None,
                      claims: Sequence[Claim] | None = None, cached_only: bool = False,
                      path: str | None = None) -> Path:
    """Measure every claim that trains a model at seed offsets 0..seeds-1 on this machine's numeric path and
    write the reference sample (`kdverify.claims.references`): values, recipe fingerprints, provenance, seconds."""
    import datetime
    import time

    import kdverify
    from kdverify.cache.checkpoint import machine_description
    from kdverify.cache.store import NotCached
    from kdverify.claims.lab import ClaimsLab
    from kdverify.claims.references import FORMAT, REFERENCE_DIR, path_name, recipe_fingerprints
    from kdverify.train.determinism import numeric_settings
    from kdverify.train.loop import TRAINER_VERSION
    from kdverify.train.recipes import moves_with_seeds

    if claims is None:
        from kdverify.claims.paper import CLAIMS as claims
    if seeds < 1:
        raise KdverifyError(f"--seeds {seeds}: at least 1")
    chosen = [c for c in claims if c.recipes and (not claim_ids or c.id in claim_ids)]
    unknown = sorted(set(claim_ids or ()) - {c.id for c in claims})
    if unknown:
        raise KdverifyError(f"unknown claim id(s) {', '.join(unknown)}; known: {', '.join(c.id for c in claims)}")
    lab = ClaimsLab(data_root, budget, "auto", cache_dir)
    lab.cache.train_missing = not cached_only
    settings = numeric_settings(lab.device)
    path = path or path_name(settings, machine_description(lab.device))  # e.g. 'cpu-avx512-2t-intel'
    target = Path(out) if out else REFERENCE_DIR / f"{path}.json"
    if target.exists() and not force:
        raise KdverifyError(f"{target} exists; pass --force to replace it")
    started = time.perf_counter()
    entries: dict[str, dict[str, Any]] = {}
    for claim in chosen:
        offsets = list(range(seeds)) if moves_with_seeds(claim) else [0]  # a teacher's value does not move with seeds
        unit, values, seconds, trained = claim.one_seed(), [], [], []
        for k in offsets:
            t0 = time.perf_counter()
            try:
                value = lab.measure_at(unit, k).value
            except NotCached as exc:  # --cached-only: the seeds trained so far, none added
                print(f"reference  {claim.id:<44} seed +{k}  not cached ({exc}): stops at {len(values)} seeds")
                break
            values.append(value)
            seconds.append(round(time.perf_counter() - t0, 1))
            trained.append(round(sum(m.seconds for m in lab.models_used if m.source != "pinned"), 1))
            print(f"reference  {claim.id:<44} seed +{k}  {value:.6g}", flush=True)
        if not values:
            continue
        offsets = offsets[:len(values)]
        entries[claim.id] = {"dataset": lab.dataset_of(claim) or "", "values": values, "seed_offsets": offsets,
                             "seconds": seconds, "train_seconds": trained,
                             "recipes": recipe_fingerprints(claim, budget), "threshold": str(claim.threshold),
                             "gated": claim.gated and not claim.xfail}
    datasets = {name: {"variant": d.variant, "checksum": d.checksum} for name, d in lab._datasets.items()}
    data = {"format": FORMAT, "path": path, "budget": budget,
            "provenance": {**settings, "machine": machine_description(lab.device), "kdverify": kdverify.__version__,
                           "trainer": TRAINER_VERSION, "data": datasets,
                           "seconds": round(time.perf_counter() - started),
                           "made": datetime.date.today().isoformat(),
                           "command": f"kdverify reference --seeds {seeds} --budget {budget}"
                                      + (" --cached-only" if cached_only else "")},
            "claims": entries}
    atomic_write_bytes(target, (json.dumps(data, indent=1) + "\n").encode())
    return target
