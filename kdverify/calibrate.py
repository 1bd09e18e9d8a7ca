"""Measure every claim at several seeds to set (and later re-check) the `ci` thresholds.

`kdverify calibrate --seeds 0 1 2` trains every recipe of the budget (teachers included) at each
seed offset, measures each claim, and prints per-claim values, their range, and the threshold
the margin rule below gives. The rule is applied by hand in `claims.CI` with the measured values
recorded in `claims.CI_BASIS`, so a reviewer sees where each number came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from kdverify.claims import CLAIMS, Claim, measure
from kdverify.data import atomic_write_bytes
from kdverify.lab import ClaimsLab

# Margin rule for absolute ci thresholds (relative claims keep their scientific thresholds):
ERRORS_MARGIN = 1.10  # error counts: worst seed * 1.10, rounded up, plus...
ERRORS_SLACK = 3  # ...3 errors (small counts like "errors on 3s" are noisy)
PERCENT_MARGIN_PTS = 1.0  # error / accuracy percentages: worst seed -/+ 1 point


def suggested_threshold(claim: Claim, values: Sequence[float]) -> str:
    op = claim.thresholds["paper"].op if claim.thresholds.get("paper") else "<="
    if claim.unit in ("errors", "errors on 3s"):
        return f"<= {math.ceil(max(values) * ERRORS_MARGIN) + ERRORS_SLACK}"
    if claim.unit == "% errors":
        return f"<= {round(max(values) + max(PERCENT_MARGIN_PTS, 0.1 * max(values)), 1)}"
    if claim.unit == "% acc":
        return f">= {round(min(values) - PERCENT_MARGIN_PTS, 2)}"
    return f"{op} (scientific threshold; worst seed {min(values) if op.startswith('>') else max(values):g})"


def calibrate(seeds: Sequence[int], budget: str = "ci", data_root: str | None = None, cache_dir: str | None = None,
              out: Path | None = None, claim_ids: Sequence[str] | None = None) -> dict:
    claims = [c for c in CLAIMS if c.recipes and (not claim_ids or c.id in claim_ids)]
    values: dict[str, list[float]] = {c.id: [] for c in claims}
    details: dict[str, list[str]] = {c.id: [] for c in claims}
    for seed in seeds:
        lab = ClaimsLab(data_root, budget, "auto", cache_dir, seed_offset=seed)
        for claim in claims:
            m = measure(claim, lab)
            values[claim.id].append(m.value)
            details[claim.id].append(m.detail)
            print(f"seed {seed}  {claim.id:<40} {m.value:>10.4g}  {m.detail}", flush=True)
    summary = {c.id: {"values": values[c.id], "details": details[c.id], "min": min(values[c.id]),
                      "max": max(values[c.id]), "mean": sum(values[c.id]) / len(seeds),
                      "suggested": suggested_threshold(c, values[c.id])} for c in claims}
    print(f"\n{'claim':<40} {'paper':>8} {'values':<32} suggested")
    for c in claims:
        s = summary[c.id]
        print(f"{c.id:<40} {c.paper_value or 0:>8.4g} {', '.join(f'{v:.4g}' for v in s['values']):<32} "
              f"{s['suggested']}")
    if out:
        atomic_write_bytes(Path(out), json.dumps({"seeds": list(seeds), "budget": budget, "claims": summary},
                                                 indent=2).encode())
    return summary


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", default="ci")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--claims", nargs="*", default=None)
    a = parser.parse_args()
    calibrate(a.seeds, a.budget, a.data_root, a.cache, a.out, a.claims)
