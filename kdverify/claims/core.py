"""Claim, Threshold and Verdict types, the metrics a claim measures with, and how it is judged.

A claim is data: a metric (registered in METRICS by name), its arguments, the published value
and ONE threshold — the published number with a stated tolerance, fixed before measuring and
the same in every budget (budgets differ only in how the models are obtained). The papers' own
claims live in `kdverify.claims.paper`; importing this module does not load them.

Verdicts: PASS / FAIL; XFAIL (a claim declared unreproducible, with its measured value and the
reason, that failed as declared) and XPASS (it passed: strict, so it counts as a failure until
the declaration is removed); REPORT (measured and shown, never gated: e.g. tuned on the test set);
ERROR (it could not be measured: data, or an exception); with `--kd-seeds N`, INCONCLUSIVE (the mean
passes but its 95 % confidence bound does not: `kdverify.claims.sampling`).

Every value is the final-epoch model's (never the best epoch on the test set); `METRIC_DEFINITIONS`
says per metric which split and which seeds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from kdverify.claims.sampling import Sample, statistical_verdict
from kdverify.registry import Registry

if TYPE_CHECKING:  # claims are data: importing them loads no torch (built-in metrics live in claims.measures)
    from kdverify.cache.records import Trained
    from kdverify.data import Dataset

OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                                    "<": operator.lt, ">": operator.gt}
STANDIN_VARIANTS = ("cifar10-jpeg-q75",)  # lossy stand-ins: absolute thresholds get the claim's stated allowance


class Lab(Protocol):
    """What a metric measures with: trained models (cached) and datasets."""

    budget: str

    def trained(self, recipe: str, seed: int | None = None) -> Trained: ...

    def dataset(self, name: str) -> Dataset: ...


@dataclass(frozen=True)
class Threshold:
    """`measured <op> value`, with the rule that derived it from the published number.

    `standin_value` (with `standin_rule`) replaces `value` when the data is a lossy stand-in of
    the work's dataset (the JPEG CIFAR-10): an allowance stated up front, named in the report.
    """

    op: str  # one of OPS
    value: float
    rule: str = ""  # e.g. "paper x 1.10": how value follows from the published number
    standin_value: float | None = None
    standin_rule: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown comparison {self.op!r}; known: {', '.join(OPS)}")

    def for_data(self, variant: str) -> "Threshold":
        """The threshold that applies on this data variant (the stand-in allowance, where one is stated)."""
        if variant in STANDIN_VARIANTS and self.standin_value is not None:
            return Threshold(self.op, self.standin_value, f"{self.standin_rule} ({variant} stand-in allowance)")
        return self

    def passes(self, measured: float) -> bool:
        return OPS[self.op](measured, self.value)

    def margin(self, measured: float) -> float:
        """How far inside the threshold `measured` is (negative: outside), in the claim's unit."""
        return (self.value - measured) if self.op in ("<=", "<") else (measured - self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:.10g}"


@dataclass(frozen=True)
class Measurement:
    value: float
    detail: str = ""  # e.g. the bias shift the search chose


@dataclass(frozen=True)
class Claim:
    """One published result as an executable check. A claim without a threshold cannot be built."""

    id: str
    source: str  # paper section / tutorial / blog
    statement: str
    metric: str  # key of METRICS
    args: dict[str, Any]
    paper_value: float | None  # None for a user's claim with no published number
    unit: str
    threshold: Threshold
    gated: bool = True  # False: REPORT only (e.g. a shift tuned on the test set)
    xfail: str = ""  # declared unreproducible: the measured value and why (strict: a pass is XPASS, a failure)
    same_model_as: str = ""  # re-measures the model of another claim: not counted as an extra pass
    note: str = ""  # why the claim is designed (or gated) the way it is, with the numbers that decided it
    min_seeds: int = 1  # judged only on the mean of at least this many seeds (--kd-seeds): one run spreads too wide

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, Threshold):
            raise TypeError(f"claim {self.id}: a claim needs a Threshold, got {self.threshold!r}")
        if self.metric not in METRIC_DEFINITIONS and self.metric not in METRICS:
            raise KeyError(f"claim {self.id}: unknown metric {self.metric!r}; known: {', '.join(METRIC_DEFINITIONS)}")

    @property
    def recipes(self) -> list[str]:
        return [v for k, v in self.args.items() if k in ("recipe", "baseline", "better", "numerator", "denominator")]

    @property
    def seeds_averaged(self) -> int:
        """How many student seeds the claim's own value averages (the tutorial's mean-of-3 claims: 3)."""
        return int(self.args.get("seeds", 1))

    @property
    def judged_over(self) -> int:
        """The fewest seeds a gated verdict of this claim rests on: its own average, or `min_seeds`."""
        return max(self.seeds_averaged, self.min_seeds)

    def gates_at(self, seeds: int) -> bool:
        """Whether a run at `seeds` sample seeds (--kd-seeds) can gate this claim, rather than only report it."""
        return self.gated and self.min_seeds <= seeds

    def one_seed(self) -> "Claim":
        """The same claim measured at one seed: the unit a sample over seeds is made of."""
        if "seeds" not in self.args:
            return self
        return replace(self, args={**self.args, "seeds": 1})


# ---------------------------------------------------------------- metrics (built-ins: kdverify.claims.measures)

METRIC_DEFINITIONS: dict[str, str] = {  # what each metric's number is, for reports: split, epoch, seeds
    "errors_on_test": "test errors of the final-epoch model (all test images, or one class's)",
    "accuracy_pct": "test accuracy % of the final-epoch model",
    "parameter_count": "trainable parameters of the architecture (no training)",
    "shifted_errors": "test errors of the final-epoch model after adding a shift to some classes' logits (fixed, "
                      "or searched on held-out training images / on the test set as named)",
    "shift_error_ratio": "test errors after the bias shift / before it, final-epoch model",
    "shift_errors_removed": "test errors before the bias shift minus after it, final-epoch model",
    "omitted_class_recovery": "share of the omitted classes' test errors the bias shift removes, final-epoch model",
    "error_ratio": "test errors of one final-epoch model / another's, at the same seed",
    "mean_accuracy_gain": "mean over student seeds of the paired test-accuracy gain (same init seed, teacher fixed)",
    "accuracy_gap": "teacher test accuracy minus the mean test accuracy of the student over seeds",
}

METRICS: Registry[Callable[..., Measurement]] = Registry(  # name -> fn(lab, **args)
    "metric", "kdverify.metrics", "register it with kdverify.claims.register_metric(name, fn, definition)")
# The built-ins register themselves when kdverify.claims.measures is imported (it loads torch); measuring a claim
# goes through kdverify.claims.measures.measure, so they are always there when a number is asked for.


def register_metric(name: str, fn: Callable[..., Measurement], definition: str, replace: bool = False) -> None:
    """Add a metric claims can name: `fn(lab, **claim.args) -> Measurement`; `definition` says in one line what
    the number is (split, epoch, seeds) for reports. A taken name needs `replace=True`."""
    if not isinstance(definition, str) or not definition.strip():
        raise ValueError(f"metric {name!r} needs a one-line definition of its number (split, epoch, seeds)")
    if name in METRIC_DEFINITIONS and name not in METRICS and not replace:  # a built-in not yet loaded
        raise ValueError(f"metric {name!r} is a built-in; pass replace=True to replace it")
    METRICS.register(name, fn, replace=replace)
    METRIC_DEFINITIONS[name] = definition


# ---------------------------------------------------------------- verdicts

FAILING = ("FAIL", "XPASS", "ERROR")  # ERROR: not measured although it should have been
# INCONCLUSIVE (--kd-seeds N: the mean passes, its confidence bound does not) fails the gate unless the run says
# `--kd-inconclusive pass`; reports count it on its own.


@dataclass
class Verdict:
    claim: Claim
    budget: str
    measured: float | None
    threshold: Threshold
    verdict: str  # PASS | FAIL | XFAIL | XPASS | REPORT
    detail: str = ""
    seconds: float = 0.0
    device: str = ""
    data_variant: str = ""
    provenance: str = ""  # how the models behind it were obtained (pinned teacher + sha256, trained, cache)
    environment: dict[str, Any] = field(default_factory=dict)  # versions, device, threads, data checksum
    n: int = 1  # how many seeds the verdict rests on (--kd-seeds)
    seeds: list[int] = field(default_factory=list)  # the seed offsets measured (added to each recipe's seed)
    values: list[float] = field(default_factory=list)  # the claim's value at each of those seeds (n > 1)
    mean: float | None = None
    bound: float | None = None  # one-sided 95 % confidence bound on the mean, on the threshold's bad side
    reference: dict[str, Any] | None = None  # the committed reference sample (kdverify.claims.references), if any
    outside_reference: bool = False  # the measured value lies outside the reference sample's min..max

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    def to_wire(self) -> dict[str, Any]:
        """Plain data that crosses processes (pytest-xdist workers -> controller) and rebuilds the verdict."""
        return {**{k: v for k, v in vars(self).items() if k not in ("claim", "threshold")},
                "claim": asdict(self.claim), "threshold": asdict(self.threshold)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "Verdict":
        claim = dict(data["claim"])
        claim["threshold"] = Threshold(**claim["threshold"])
        return cls(**{**data, "claim": Claim(**claim), "threshold": Threshold(**data["threshold"])})

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.id, "source": self.claim.source, "statement": self.claim.statement,
                "paper": self.claim.paper_value, "unit": self.claim.unit, "measured": self.measured,
                "threshold": str(self.threshold), "rule": self.threshold.rule, "verdict": self.verdict,
                "gated": self.claim.gated, "xfail": self.claim.xfail, "same_model_as": self.claim.same_model_as,
                "detail": self.detail, "seconds": round(self.seconds, 1), "device": self.device,
                "data_variant": self.data_variant, "budget": self.budget, "provenance": self.provenance,
                "environment": self.environment, "metric": self.claim.metric,
                "definition": METRIC_DEFINITIONS.get(self.claim.metric, ""), "n": self.n, "seeds": self.seeds,
                "values": self.values, "mean": self.mean, "bound": self.bound, "reference": self.reference,
                "outside_reference": self.outside_reference}


def judge(claim: Claim, measured: Measurement, data_variant: str = "",
          sample: "Sample | None" = None) -> tuple[str, Threshold]:
    """The verdict and the threshold that applied (the same in every budget). With a sample over seeds
    (`--kd-seeds N`), a gated claim passes only when the 95 % confidence bound on its mean does."""
    threshold = claim.threshold.for_data(data_variant)
    passed = threshold.passes(measured.value)
    n = sample.n if sample is not None else 1
    if sample is not None and sample.n > 1 and claim.gated and not claim.xfail and n >= claim.min_seeds:
        return statistical_verdict(sample, threshold.passes), threshold
    if not claim.gated or n < claim.min_seeds:  # min_seeds: a single run's spread is wider than the tolerance
        return "REPORT", threshold
    if claim.xfail:
        return ("XPASS" if passed else "XFAIL"), threshold
    return ("PASS" if passed else "FAIL"), threshold
