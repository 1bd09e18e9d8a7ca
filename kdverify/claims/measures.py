"""The built-in metrics claims name (`kdverify.claims.core.METRICS`): how each number is measured from trained models.

Apart from the claim types so that claims stay data: this module (and torch) loads when a claim is measured.
"""

from __future__ import annotations

import torch

from kdverify.cache.records import Trained
from kdverify.claims.core import METRICS, Claim, Lab, Measurement
from kdverify.train.loop import transfer_split
from kdverify.train.metrics import Evaluation, predict_logits, search_bias_shift, shift_logits
from kdverify.train.models import build_model, count_parameters


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
    from kdverify.train.recipes import get_recipe

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


BUILT_IN = (errors_on_test, accuracy_pct, parameter_count, shifted_errors, shift_error_ratio, shift_errors_removed,
            omitted_class_recovery, error_ratio, mean_accuracy_gain, accuracy_gap)


def register_built_ins() -> None:
    """Put every built-in metric the registry lacks into it; a user's replacement (register_metric replace=True)
    stays. Run on import, and again where a registry was restored to a state from before this import."""
    for metric in BUILT_IN:
        if metric.__name__ not in METRICS:
            METRICS.register(metric.__name__, metric)


register_built_ins()


def measure(claim: Claim, lab: Lab) -> Measurement:
    """The claim's value, measured with the lab's models by the metric the claim names."""
    if claim.metric not in METRICS:
        register_built_ins()
    return METRICS[claim.metric](lab, **claim.args)
