"""The claim registry: every number of the two reference works, as data, and how to judge it.

A claim names a metric (a function registered in METRICS), the arguments it measures with, the
paper's value, and a threshold per budget. `paper` thresholds are the paper's number with a
stated tolerance. `ci` thresholds were measured with `kdverify calibrate` (every ci recipe, the
teachers too, trained at several seeds on a 2-core CPU) and sit a stated margin beyond the worst
seed; `ci_basis` records those measurements next to each claim.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from kdverify.cache import Trained
from kdverify.ci_thresholds import CI_THRESHOLDS
from kdverify.data import Dataset
from kdverify.models import build_model, count_parameters
from kdverify.recipes import get_recipe
from kdverify.train import Evaluation, predict_logits, search_bias_shift, shift_logits, transfer_split

OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                                    "<": operator.lt, ">": operator.gt}


class Lab(Protocol):
    """What a metric measures with: trained models (cached) and datasets."""

    budget: str

    def trained(self, recipe: str, seed: int | None = None) -> Trained: ...

    def dataset(self, name: str) -> Dataset: ...


@dataclass(frozen=True)
class Threshold:
    op: str  # one of OPS
    value: float

    def passes(self, measured: float) -> bool:
        return OPS[self.op](measured, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:.10g}"


@dataclass(frozen=True)
class Measurement:
    value: float
    detail: str = ""  # e.g. the bias shift the search chose


@dataclass(frozen=True)
class Claim:
    id: str
    source: str  # paper section / tutorial / blog
    statement: str
    metric: str  # key of METRICS
    args: dict[str, Any]
    paper_value: float | None  # None for relative claims that have no single published number
    unit: str
    thresholds: dict[str, Threshold | None]  # budget -> threshold (None: not judged at that budget)
    ci_basis: str = ""  # how the ci threshold was measured
    needs_original_data: bool = False  # absolute CIFAR numbers: not comparable on the JPEG stand-in
    skip_reason: dict[str, str] = field(default_factory=dict)  # budget -> why it is not judged there

    @property
    def recipes(self) -> list[str]:
        names = [v for k, v in self.args.items() if k in ("recipe", "baseline", "better")]
        return names


# ---------------------------------------------------------------- metrics


def _holdout_logits(lab: Lab, trained: Trained) -> tuple[Any, Any]:
    dataset = lab.dataset(trained.recipe.dataset)
    _, holdout = transfer_split(trained.recipe, dataset)
    return predict_logits(trained.model, holdout, dataset.mean, dataset.std), holdout.labels


def _test_logits(lab: Lab, trained: Trained) -> tuple[Any, Any]:
    dataset = lab.dataset(trained.recipe.dataset)
    return predict_logits(trained.model, dataset.test, dataset.mean, dataset.std), dataset.test.labels


def test_errors(lab: Lab, recipe: str, cls: int | None = None, percent: bool = False) -> Measurement:
    ev = lab.trained(recipe).evaluation
    return _count(ev, cls, percent)


def _count(ev: Evaluation, cls: int | None, percent: bool) -> Measurement:
    if cls is not None:
        return Measurement(ev.per_class_errors[cls], f"of {ev.per_class_total[cls]} test {cls}s")
    return Measurement(100 * ev.error_rate if percent else ev.errors, f"of {ev.total}")


def accuracy_pct(lab: Lab, recipe: str) -> Measurement:
    ev = lab.trained(recipe).evaluation
    return Measurement(100 * (1 - ev.error_rate), f"{ev.total - ev.errors}/{ev.total}")


def parameter_count(lab: Lab, arch: str) -> Measurement:
    return Measurement(count_parameters(build_model(arch)))


def shifted_errors(lab: Lab, recipe: str, classes: list[int], shift: float | str, cls: int | None = None,
                   percent: bool = False) -> Measurement:
    """Errors after shifting the output bias of `classes`: by a fixed amount (the paper's), or by the
    amount a search finds on the test set ('test', as the paper tuned it) or on held-out training
    images ('holdout', honest)."""
    trained = lab.trained(recipe)
    logits, labels = _test_logits(lab, trained)
    if isinstance(shift, str):
        tune_logits, tune_labels = (logits, labels) if shift == "test" else _holdout_logits(lab, trained)
        delta, _ = search_bias_shift(tune_logits, tune_labels, classes)
    else:
        delta = shift
    ev = Evaluation.from_logits(shift_logits(logits, classes, delta), labels)
    m = _count(ev, cls, percent)
    return Measurement(m.value, f"shift {delta:+g}" + (f" tuned on {shift}" if isinstance(shift, str) else ""))


def errors_saved(lab: Lab, baseline: str, better: str) -> Measurement:
    """Test errors of `baseline` minus those of `better` (positive: `better` makes fewer)."""
    a, b = lab.trained(baseline).evaluation.errors, lab.trained(better).evaluation.errors
    return Measurement(a - b, f"{a} -> {b}")


def omitted_class_recovery(lab: Lab, recipe: str, classes: list[int], shift: float | str) -> Measurement:
    """Fraction of the omitted classes' test errors that the bias shift removes."""
    before = sum(lab.trained(recipe).evaluation.per_class_errors[c] for c in classes)
    after = sum(shifted_errors(lab, recipe, classes, shift, cls=c).value for c in classes)
    return Measurement(round((before - after) / max(before, 1), 4), f"{before} -> {int(after)} errors on {classes}")


def mean_accuracy_gain(lab: Lab, recipe: str, baseline: str, seeds: int = 3) -> Measurement:
    """Mean over seeds of accuracy(recipe) - accuracy(baseline), each pair from the same init seed."""
    base_seed = get_recipe(baseline, lab.budget).seed  # `trained` adds the lab's seed offset itself
    gains = []
    for k in range(seeds):
        acc = lambda name: 100 * (1 - lab.trained(name, seed=base_seed + k).evaluation.error_rate)  # noqa: E731
        gains.append(acc(recipe) - acc(baseline))
    return Measurement(round(sum(gains) / len(gains), 3), "per seed " + ", ".join(f"{g:+.2f}" for g in gains))


METRICS: dict[str, Callable[..., Measurement]] = {
    "test_errors": test_errors,
    "accuracy_pct": accuracy_pct,
    "parameter_count": parameter_count,
    "shifted_errors": shifted_errors,
    "errors_saved": errors_saved,
    "omitted_class_recovery": omitted_class_recovery,
    "mean_accuracy_gain": mean_accuracy_gain,
}


def measure(claim: Claim, lab: Lab) -> Measurement:
    return METRICS[claim.metric](lab, **claim.args)


# ---------------------------------------------------------------- the registry

HINTON = "Hinton et al. 2015, sec. 3"
BLOG = "public reproduction (blog)"
TUTORIAL = "PyTorch KD tutorial"
MNIST_TOL = 1.10  # paper budget: at most 10% more MNIST errors than published
CIFAR_TOL = 1.0  # paper budget: within 1 accuracy point (original CIFAR-10 only)
JPEG_NOTE = "absolute CIFAR-10 numbers need the original data; on the JPEG stand-in only relative claims count"


def _ci(claim_id: str) -> tuple[Threshold | None, str]:
    """A claim's measured ci threshold (None: reported, not gated) and its basis, from ci_thresholds.py."""
    op, value, basis = CI_THRESHOLDS.get(claim_id, (None, None, "not calibrated"))
    return (Threshold(op, value) if op is not None else None), basis


def _claim(id: str, source: str, statement: str, metric: str, args: dict[str, Any], paper: float | None, unit: str,
           paper_threshold: Threshold, basis_prefix: str = "", **extra: Any) -> Claim:
    ci, basis = _ci(id)
    return Claim(id, source, statement, metric, args, paper, unit, {"paper": paper_threshold, "ci": ci},
                 basis_prefix + basis, **extra)


def _errors_claim(id: str, source: str, statement: str, paper: float, metric: str = "test_errors",
                  unit: str = "errors", same_model_as: str = "", **args: Any) -> Claim:
    return _claim(id, source, statement, metric, args, paper, unit, Threshold("<=", round(paper * MNIST_TOL, 1)),
                  f"same model as {same_model_as}; " if same_model_as else "")


def _accuracy_claim(id: str, statement: str, recipe: str, paper: float) -> Claim:
    return _claim(id, TUTORIAL, statement, "accuracy_pct", {"recipe": recipe}, paper, "% acc",
                  Threshold(">=", round(paper - CIFAR_TOL, 2)), needs_original_data=True)


CLAIMS: list[Claim] = [
    # ---- Hinton et al. 2015, section 3
    _errors_claim("hinton.teacher", HINTON, "teacher 784-1200-1200-10 with dropout and jitter", 67,
                  recipe="hinton-teacher"),
    _errors_claim("hinton.student_hard", HINTON, "student 784-800-800-10 on hard labels", 146,
                  recipe="hinton-student-hard"),
    _errors_claim("hinton.student_kd", HINTON, "same student on soft targets at T=20", 74,
                  recipe="hinton-student-kd"),
    _errors_claim("hinton.no3.errors", HINTON, "transfer set without any 3: all test errors", 206,
                  recipe="hinton-student-kd-no3"),
    _errors_claim("hinton.no3.errors_on_3", HINTON, "transfer set without any 3: errors on the 1010 test 3s", 133,
                  unit="errors on 3s", recipe="hinton-student-kd-no3", cls=3),
    _errors_claim("hinton.no3.bias35", HINTON, "no-3 student with +3.5 on the 3's bias: all errors", 109,
                  metric="shifted_errors", recipe="hinton-student-kd-no3", classes=[3], shift=3.5),
    _errors_claim("hinton.no3.bias35_on_3", HINTON, "no-3 student with +3.5 on the 3's bias: errors on 3s", 14,
                  metric="shifted_errors", unit="errors on 3s", recipe="hinton-student-kd-no3", classes=[3],
                  shift=3.5, cls=3),
    _errors_claim("hinton.no3.bias_searched_test", HINTON,
                  "no-3 student, 3's bias shift searched on the test set (as the paper tuned it)", 109,
                  metric="shifted_errors", recipe="hinton-student-kd-no3", classes=[3], shift="test"),
    _errors_claim("hinton.no3.bias_searched_holdout", HINTON,
                  "no-3 student, 3's bias shift searched on 5,000 held-out training images", 109,
                  metric="shifted_errors", recipe="hinton-student-kd-no3", classes=[3], shift="holdout"),
    _errors_claim("hinton.only78.errors", HINTON, "transfer set of only 7s and 8s: test error rate", 47.3,
                  unit="% errors", recipe="hinton-student-kd-only78", percent=True),
    _errors_claim("hinton.only78.bias76", HINTON, "only-7/8 student with the 7 and 8 biases lowered by 7.6", 13.2,
                  metric="shifted_errors", unit="% errors", recipe="hinton-student-kd-only78", classes=[7, 8],
                  shift=-7.6, percent=True),
    _errors_claim("hinton.only78.bias_searched_holdout", HINTON,
                  "only-7/8 student, 7/8 bias shift searched on held-out training images", 13.2,
                  metric="shifted_errors", unit="% errors", recipe="hinton-student-kd-only78", classes=[7, 8],
                  shift="holdout", percent=True),
    # ---- the relative claims that carry the science
    _claim("hinton.kd_beats_hard", HINTON, "the KD student makes clearly fewer errors than the same student on "
           "hard labels", "errors_saved", {"baseline": "hinton-student-hard", "better": "hinton-student-kd"},
           146 - 74, "errors saved", Threshold(">=", 36)),
    _claim("hinton.no3.bias_restores_3s", HINTON, "the bias shift restores most of the omitted class (share of "
           "3-errors removed, shift tuned on held-out images)", "omitted_class_recovery",
           {"recipe": "hinton-student-kd-no3", "classes": [3], "shift": "holdout"}, round((133 - 14) / 133, 3),
           "fraction", Threshold(">=", 0.5)),
    # ---- the public reproduction
    _errors_claim("blog.teacher", BLOG, "teacher after 1000 epochs", 64, same_model_as="hinton.teacher",
                  recipe="hinton-teacher"),
    _errors_claim("blog.student_kd", BLOG, "KD student (alpha 0.7, T=20) after 1000 epochs", 67,
                  same_model_as="hinton.student_kd", recipe="hinton-student-kd"),
    _errors_claim("blog.no3", BLOG, "KD student without 3s in the transfer set", 161,
                  same_model_as="hinton.no3.errors", recipe="hinton-student-kd-no3"),
    _errors_claim("blog.cnn", BLOG, "small CNN, Adam 1e-4, 100 epochs", 44, recipe="blog-cnn"),
    # ---- PyTorch KD tutorial (CIFAR-10)
    Claim("tutorial.params_deepnn", TUTORIAL, "DeepNN parameter count", "parameter_count", {"arch": "deep_nn"},
          1_186_986, "params", {"paper": Threshold("==", 1_186_986), "ci": Threshold("==", 1_186_986)},
          "exact count, no training"),
    Claim("tutorial.params_lightnn", TUTORIAL, "LightNN parameter count", "parameter_count", {"arch": "light_nn"},
          267_738, "params", {"paper": Threshold("==", 267_738), "ci": Threshold("==", 267_738)},
          "exact count, no training"),
    _accuracy_claim("tutorial.teacher", "DeepNN, CE, 10 epochs", "tutorial-deepnn", 74.69),
    _accuracy_claim("tutorial.student", "LightNN alone, CE", "tutorial-lightnn", 70.40),
    _accuracy_claim("tutorial.kd", "LightNN + KD (T=2, 0.25/0.75)", "tutorial-lightnn-kd", 70.26),
    _accuracy_claim("tutorial.cosine", "LightNN + cosine loss on hidden representation", "tutorial-lightnn-cosine",
                    70.71),
    _accuracy_claim("tutorial.hint", "LightNN + FitNets hint regressor", "tutorial-lightnn-hint", 71.50),
    _claim("tutorial.teacher_beats_student", TUTORIAL, "the teacher is more accurate than the student alone",
           "mean_accuracy_gain", {"recipe": "tutorial-deepnn", "baseline": "tutorial-lightnn", "seeds": 1},
           round(74.69 - 70.40, 2), "acc pts", Threshold(">", 0)),
] + [
    _claim(f"tutorial.{kind}_does_not_hurt", TUTORIAL,
           f"{kind} distillation does not hurt the student (mean accuracy gain over 3 seeds, direction only; "
           "published reruns show +-0.5 pt noise)", "mean_accuracy_gain",
           {"recipe": f"tutorial-lightnn-{kind}", "baseline": "tutorial-lightnn", "seeds": 3},
           paper, "acc pts", Threshold(">=", -0.5))
    for kind, paper in (("kd", round(70.26 - 70.40, 2)), ("cosine", round(70.71 - 70.40, 2)),
                        ("hint", round(71.50 - 70.40, 2)))
]

CLAIMS_BY_ID = {c.id: c for c in CLAIMS}


@dataclass
class Verdict:
    claim: Claim
    budget: str
    measured: float | None
    threshold: Threshold | None
    verdict: str  # PASS | FAIL | SKIP
    detail: str = ""
    seconds: float = 0.0
    device: str = ""
    data_variant: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.id, "source": self.claim.source, "statement": self.claim.statement,
                "paper": self.claim.paper_value, "unit": self.claim.unit, "measured": self.measured,
                "threshold": str(self.threshold) if self.threshold else None, "verdict": self.verdict,
                "detail": self.detail, "seconds": round(self.seconds, 1), "device": self.device,
                "data_variant": self.data_variant, "budget": self.budget, "ci_basis": self.claim.ci_basis}


def judge(claim: Claim, measured: Measurement, budget: str) -> tuple[str, Threshold | None]:
    threshold = claim.thresholds.get(budget)
    if threshold is None:
        return "SKIP", None
    return ("PASS" if threshold.passes(measured.value) else "FAIL"), threshold
