"""Claim, Threshold and Verdict types, the metrics a claim measures with, and how it is judged.

A claim is data: a metric (registered in METRICS by name), its arguments, the published value
and ONE threshold — the published number with a stated tolerance, fixed before measuring and
the same in every budget (budgets differ only in how the models are obtained). The papers' own
claims live in `kdverify.paper_claims`; importing this module does not load them.

Verdicts: PASS / FAIL; XFAIL (a claim declared unreproducible, with its measured value and the
reason, that failed as declared) and XPASS (it passed: strict, so it counts as a failure until
the declaration is removed); REPORT (measured and shown, never gated: e.g. tuned on the test set);
ERROR (it could not be measured: data, or an exception); with `--kd-seeds N`, INCONCLUSIVE (the mean
passes but its 95 % confidence bound does not: `kdverify.sampling`).

Every value is the final-epoch model's (never the best epoch on the test set); `METRIC_DEFINITIONS`
says per metric which split and which seeds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Protocol

import torch

from kdverify.cache import Trained
from kdverify.data import Dataset
from kdverify.models import build_model, count_parameters
from kdverify.sampling import Sample, statistical_verdict
from kdverify.train import Evaluation, predict_logits, search_bias_shift, shift_logits, transfer_split

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
        if self.metric not in METRICS:
            raise KeyError(f"claim {self.id}: unknown metric {self.metric!r}; known: {', '.join(METRICS)}")

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

    def one_seed(self) -> "Claim":
        """The same claim measured at one seed: the unit a sample over seeds is made of."""
        if "seeds" not in self.args:
            return self
        return replace(self, args={**self.args, "seeds": 1})


# ---------------------------------------------------------------- metrics


def _holdout_logits(lab: Lab, trained: Trained) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = lab.dataset(trained.recipe.dataset)
    _, holdout = transfer_split(trained.recipe, dataset)
    return predict_logits(trained.model, holdout, dataset.mean, dataset.std), holdout.labels


def _test_logits(lab: Lab, trained: Trained) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = lab.dataset(trained.recipe.dataset)
    return predict_logits(trained.model, dataset.test, dataset.mean, dataset.std), dataset.test.labels


def _count(ev: Evaluation, cls: int | None, percent: bool) -> Measurement:
    if cls is not None:
        return Measurement(ev.per_class_errors[cls], f"of {ev.per_class_total[cls]} test {cls}s")
    return Measurement(100 * ev.error_rate if percent else ev.errors, f"of {ev.total}")


def errors_on_test(lab: Lab, recipe: str, cls: int | None = None, percent: bool = False) -> Measurement:
    """Test errors of a recipe's model: all, or on one class; a count or a percentage."""
    return _count(lab.trained(recipe).evaluation, cls, percent)


def accuracy_pct(lab: Lab, recipe: str) -> Measurement:
    ev = lab.trained(recipe).evaluation
    return Measurement(100 * (1 - ev.error_rate), f"{ev.total - ev.errors}/{ev.total}")


def parameter_count(lab: Lab, arch: str) -> Measurement:
    return Measurement(count_parameters(build_model(arch)))


def _shifted(lab: Lab, recipe: str, classes: list[int], shift: float | str) -> tuple[Evaluation, str]:
    """Test evaluation after shifting the output bias of `classes`: by a fixed amount (the paper's), or
    by the amount a search finds: fewest errors on the test set ('test', as the paper tuned it), or
    the maximum-likelihood shift on held-out training images ('holdout', never touching test)."""
    trained = lab.trained(recipe)
    logits, labels = _test_logits(lab, trained)
    if isinstance(shift, str):
        if shift == "test":
            delta, _ = search_bias_shift(logits, labels, classes, criterion="errors")
        else:
            delta, _ = search_bias_shift(*_holdout_logits(lab, trained), classes, criterion="nll")
        how = f"shift {delta:+g} tuned on {shift}"
    else:
        delta, how = shift, f"shift {shift:+g}"
    return Evaluation.from_logits(shift_logits(logits, classes, delta), labels), how


def shifted_errors(lab: Lab, recipe: str, classes: list[int], shift: float | str, cls: int | None = None,
                   percent: bool = False) -> Measurement:
    """Test errors after a bias shift of `classes` (see `_shifted`)."""
    ev, how = _shifted(lab, recipe, classes, shift)
    return Measurement(_count(ev, cls, percent).value, how)


def shift_error_ratio(lab: Lab, recipe: str, classes: list[int], shift: float | str) -> Measurement:
    """Test errors after the bias shift divided by those before (Hinton's 47.3% -> 13.2%: 0.28)."""
    before = lab.trained(recipe).evaluation.errors
    ev, how = _shifted(lab, recipe, classes, shift)
    return Measurement(round(ev.errors / max(before, 1), 4), f"{before} -> {ev.errors} errors, {how}")


def shift_errors_removed(lab: Lab, recipe: str, classes: list[int], shift: float | str) -> Measurement:
    """Test errors the bias shift removes (positive: the shift lowers total errors)."""
    before = lab.trained(recipe).evaluation.errors
    ev, how = _shifted(lab, recipe, classes, shift)
    return Measurement(before - ev.errors, f"{before} -> {ev.errors} errors, {how}")


def omitted_class_recovery(lab: Lab, recipe: str, classes: list[int], shift: float | str) -> Measurement:
    """Fraction of the omitted classes' test errors that the bias shift removes."""
    before = sum(lab.trained(recipe).evaluation.per_class_errors[c] for c in classes)
    ev, how = _shifted(lab, recipe, classes, shift)
    after = sum(ev.per_class_errors[c] for c in classes)
    return Measurement(round((before - after) / max(before, 1), 4), f"{before} -> {after} errors on {classes}, {how}")


def error_ratio(lab: Lab, numerator: str, denominator: str) -> Measurement:
    """Test errors of one recipe's model over another's (KD student / hard-label student)."""
    a, b = lab.trained(numerator).evaluation.errors, lab.trained(denominator).evaluation.errors
    return Measurement(round(a / max(b, 1), 4), f"{a} / {b} errors")


def _seed_accuracies(lab: Lab, recipe: str, seeds: int) -> list[float]:
    from kdverify.recipes import get_recipe

    base = get_recipe(recipe, lab.budget).seed  # `trained` adds the lab's seed offset itself
    return [100 * (1 - lab.trained(recipe, seed=base + k).evaluation.error_rate) for k in range(seeds)]


def mean_accuracy_gain(lab: Lab, recipe: str, baseline: str, seeds: int = 3) -> Measurement:
    """Mean over student seeds of accuracy(recipe) - accuracy(baseline), each pair from the same init seed;
    a teacher the recipes distil from stays fixed across seeds."""
    better, base = _seed_accuracies(lab, recipe, seeds), _seed_accuracies(lab, baseline, seeds)
    gains = [a - b for a, b in zip(better, base)]
    return Measurement(round(sum(gains) / len(gains), 3), "per seed " + ", ".join(
        f"{a:.2f}-{b:.2f}={g:+.2f}" for a, b, g in zip(better, base, gains)))


def accuracy_gap(lab: Lab, better: str, baseline: str, seeds: int = 3) -> Measurement:
    """Accuracy of one model (a fixed teacher) minus the mean accuracy of `baseline` over seeds."""
    top = 100 * (1 - lab.trained(better).evaluation.error_rate)
    base = _seed_accuracies(lab, baseline, seeds)
    mean = sum(base) / len(base)
    return Measurement(round(top - mean, 3), f"{top:.2f} - mean({', '.join(f'{b:.2f}' for b in base)})")


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

METRICS: dict[str, Callable[..., Measurement]] = {
    "errors_on_test": errors_on_test,
    "accuracy_pct": accuracy_pct,
    "parameter_count": parameter_count,
    "shifted_errors": shifted_errors,
    "shift_error_ratio": shift_error_ratio,
    "shift_errors_removed": shift_errors_removed,
    "omitted_class_recovery": omitted_class_recovery,
    "error_ratio": error_ratio,
    "mean_accuracy_gain": mean_accuracy_gain,
    "accuracy_gap": accuracy_gap,
}


def register_metric(name: str, fn: Callable[..., Measurement], definition: str, replace: bool = False) -> None:
    """Add a metric claims can name: `fn(lab, **claim.args) -> Measurement`; `definition` says in one line what
    the number is (split, epoch, seeds) for reports. A taken name needs `replace=True`."""
    if not isinstance(name, str) or not name:
        raise ValueError("a metric's name must be a non-empty string")
    if name in METRICS and METRICS[name] is not fn and not replace:
        raise ValueError(f"metric {name!r} is already registered; pass replace=True to replace it")
    METRICS[name], METRIC_DEFINITIONS[name] = fn, definition


def measure(claim: Claim, lab: Lab) -> Measurement:
    return METRICS[claim.metric](lab, **claim.args)


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
    reference: dict[str, Any] | None = None  # the committed reference sample (kdverify.references), if any
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
