"""How sure a claim's number is: a sample over seeds and numeric paths, its bounds, and the verdicts they give.

Two rules, both one-sided at 95 % with Student's t (scipy), both pure functions of a list of values:

- **Statistical verdict** (`--kd-seeds N`): the claim's value at N seeds; PASS when the confidence bound
  on the mean, ``mean -+ t(n-1) * s / sqrt(n)``, is inside the threshold; FAIL when the mean itself is
  outside; INCONCLUSIVE otherwise.
- **Headroom** (committed reference samples): a claim is FRAGILE when the next single run could land
  outside its threshold: the prediction bound ``mean -+ t(n-1) * s * sqrt(1/k + 1/n)`` for a value that
  averages k seeds, or the worst value the sample holds (for k > 1: the mean of its worst k), whichever
  is stricter, is outside the threshold.

Direction comes from the threshold: for ``<=`` / ``<`` the bad side is up, for ``>=`` / ``>`` down.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
VERDICT_PASS, VERDICT_FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def _t(n: int) -> float:
    """One-sided 95 % quantile of Student's t with n - 1 degrees of freedom (inf for n < 2: no spread known)."""
    if n < 2:
        return math.inf
    from scipy.stats import t

    return float(t.ppf(CONFIDENCE, n - 1))


def bad_side(op: str) -> int:
    """+1 when larger values fail the threshold (`<=`, `<`), -1 when smaller ones do; 0 for `==`."""
    return {"<=": 1, "<": 1, ">=": -1, ">": -1}.get(op, 0)


@dataclass(frozen=True)
class Sample:
    """Values of one claim over seeds (and paths), with mean, spread and the two bounds."""

    values: tuple[float, ...]
    op: str  # the threshold's comparison: which side is the bad one

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    def _toward_bad(self, width: float) -> float:
        side = bad_side(self.op)
        return self.mean if side == 0 or width == 0 else self.mean + side * width

    def confidence_bound(self) -> float:
        """One-sided 95 % bound on the mean, on the threshold's bad side (the mean itself for n = 1)."""
        return self._toward_bad(_t(self.n) * self.std / math.sqrt(self.n) if self.n > 1 else 0.0)

    def prediction_bound(self, k: int = 1) -> float:
        """One-sided 95 % bound for the next value that averages k seeds, on the bad side (inf/-inf for n < 2)."""
        if self.n < 2:
            return self._toward_bad(math.inf)
        return self._toward_bad(_t(self.n) * self.std * math.sqrt(1 / k + 1 / self.n))

    def worst(self, k: int = 1) -> float:
        """The worst value the sample holds for a claim averaging k seeds: the mean of its k worst values."""
        side = bad_side(self.op) or 1
        ordered = sorted(self.values, reverse=side > 0)
        return statistics.fmean(ordered[:max(1, min(k, self.n))])

    def headroom_bound(self, k: int = 1) -> float:
        """The stricter of the prediction bound and the worst value (further on the bad side)."""
        a, b = self.prediction_bound(k), self.worst(k)
        return max(a, b) if bad_side(self.op) >= 0 else min(a, b)


def statistical_verdict(sample: Sample, passes: Any) -> str:
    """PASS when the confidence bound on the mean passes, FAIL when the mean fails, else INCONCLUSIVE.

    `passes` is the threshold's test (value -> bool). With n = 1 the bound is the value: today's verdict.
    """
    if not passes(sample.mean):
        return VERDICT_FAIL
    return VERDICT_PASS if passes(sample.confidence_bound()) else INCONCLUSIVE


def is_fragile(sample: Sample, passes: Any, k: int = 1) -> bool:
    """FRAGILE: the next run's value could land outside the threshold (see the module docstring)."""
    return not passes(sample.headroom_bound(k))


def summary(sample: Sample) -> dict[str, Any]:
    """Plain numbers for reports and JSON."""
    return {"n": sample.n, "mean": round(sample.mean, 4), "std": round(sample.std, 4),
            "min": min(sample.values), "max": max(sample.values)}
