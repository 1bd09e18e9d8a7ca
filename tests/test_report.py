"""The claims report: table, summary counts, budget note, Markdown/JSON files, the papers' lines on the curves."""

import dataclasses
import json

import pytest
import torch

from kdverify.cache.records import Trained
from kdverify.claims.core import Claim, Threshold, Verdict
from kdverify.claims.report import (budget_note, markdown, paper_error_pct, reference_text, summary_line, table,
                                    write_report)
from kdverify.train.loop import EpochRecord
from kdverify.train.metrics import Evaluation
from kdverify.train.models import HintonMLP
from kdverify.train.recipes import get_recipe

ACC = Threshold(">=", 69.26, "tutorial - 1 pt", 68.26, "tutorial - 2 pt")


KD_COUNT = Threshold("<=", 81, "paper x 1.10")


def _claim(id, metric="errors_on_test", paper=74.0, threshold=KD_COUNT, unit="errors", **fields):
    args = fields.pop("args", {"recipe": "hinton-student-kd"})
    return Claim(id, "test", f"statement of {id}", metric, args, paper, unit, threshold, **fields)


def _verdict(claim, verdict, measured=70.0, variant="mnist", **kwargs):
    threshold = kwargs.pop("threshold", claim.threshold.for_data(variant))
    return Verdict(claim, kwargs.pop("budget", "ci"), measured, threshold, verdict, kwargs.pop("detail", "of 10000"),
                   12.3, "cpu", variant, kwargs.pop("provenance", "hinton-student-kd s0: trained now (ab12, 9 s)"))


def _trained(recipe="hinton-student-kd", errors=7, history=((1, 20), (2, 7)), source="trained"):
    confusion = torch.eye(10, dtype=torch.int64) * 1000
    confusion[3, 3] -= errors
    confusion[3, 5] = errors  # 10000 test images, `errors` of them wrong
    return Trained(get_recipe(recipe, "ci"), "k", Evaluation(confusion),
                   [EpochRecord(e, 0.5, n, 1.0) for e, n in history], 321.0, source, "ab12cd34ef56" + "0" * 52,
                   "cpu: 2 cores", {"torch": "2.13.0+cpu", "device_type": "cpu", "cpu_kernels": "AVX2", "threads": 2},
                   model=HintonMLP(16))


def _mixed():
    kd = _claim("my.kd")
    return [_verdict(kd, "PASS"),
            _verdict(_claim("my.kd_again", same_model_as="my.kd"), "PASS"),
            _verdict(_claim("my.kd_fails", threshold=Threshold("<=", 60, "paper x 0.8")), "FAIL"),
            _verdict(_claim("my.declared", xfail="measured 90: the shift was tuned differently"), "XFAIL", 90),
            _verdict(_claim("my.surprise", xfail="expected to fail"), "XPASS"),
            _verdict(_claim("my.tuned_on_test", gated=False), "REPORT"),
            _verdict(_claim("my.nodata"), "SKIP", None, variant="")]


def test_summary_counts_re_measures_xpass_and_reports_separately():
    line = summary_line(_mixed())
    assert line == ("claims: 2 passed (1 of them re-measure a model judged by another claim), "
                    "2 failed (1 of them xpassed (strict: failure)), 1 xfailed, 1 reported (not gated), 1 skipped")
    plain = summary_line([_verdict(_claim("a"), "PASS")])
    assert plain == "claims: 1 passed, 0 failed, 0 xfailed, 0 reported (not gated), 0 skipped"


def test_table_has_every_column_and_the_stand_in_rule():
    acc = _claim("my.acc", "accuracy_pct", 70.26, ACC, "% acc", args={"recipe": "tutorial-lightnn-kd"})
    verdicts = [_verdict(_claim("my.kd"), "PASS"), _verdict(acc, "FAIL", 67.9, "cifar10-jpeg-q75")]
    lines = table(verdicts).splitlines()
    assert lines[0].split() == ["claim", "paper", "measured", "threshold", "rule", "verdict", "n", "reference",
                                "seconds", "data"]
    assert lines[2].split() == ["my.kd", "74", "70", "<=", "81", "paper", "x", "1.10", "PASS", "1", "-", "12",
                                "mnist"]
    assert "tutorial - 2 pt (cifar10-jpeg-q75 stand-in allowance)" in lines[3] and ">= 68.26" in lines[3]
    assert {line.index(" PASS ") if "PASS" in line else line.index(" FAIL ") for line in lines[2:]} == {
        lines[0].index(" verdict ")}  # fixed width: the verdicts line up under their header


def test_budget_note_says_thresholds_are_fixed_and_names_the_stand_in_allowance():
    acc = _claim("my.acc", "accuracy_pct", 70.26, ACC, "% acc", args={"recipe": "tutorial-lightnn-kd"})
    note = budget_note([_verdict(acc, "PASS", 70.0, "cifar10-jpeg-q75"), _verdict(_claim("x"), "PASS")])
    assert "published numbers with the stated tolerance" in note and "same in every budget" in note
    assert "pinned" in note and "trained now" in note
    assert "tutorial - 2.0 pt instead of - 1.0 pt" in note
    paper = budget_note([_verdict(_claim("x"), "PASS", budget="paper")])
    assert "from scratch" in paper and "stand-in" not in paper and "pinned" not in paper
    assert "works' own recipes" in budget_note([_verdict(_claim("x"), "PASS", budget="original")])


def test_user_claim_without_paper_value_or_known_unit_does_not_crash(tmp_path):
    odd = _claim("user.thing", "accuracy_pct", None, Threshold(">=", 50), "furlongs", args={"recipe": "blog-cnn"})
    verdicts = [_verdict(odd, "PASS", 99.5, detail="a|b")]
    assert "user.thing" in table(verdicts)
    assert paper_error_pct(verdicts, {"blog-cnn": 10000}) == {}
    written = write_report(tmp_path, verdicts, [_trained("blog-cnn")])
    md = (tmp_path / "report.md").read_text()
    assert "| user.thing | - | 99.5 | >= 50 | - |" in md and "a\\|b" in md
    assert json.loads((tmp_path / "report.json").read_text())["claims"][0]["paper"] is None
    assert str(tmp_path / "report.md") in written


def test_paper_lines_map_recipes_to_the_papers_error_percent():
    claims = [
        _claim("count", paper=74, args={"recipe": "hinton-student-kd"}),
        _claim("count_again", paper=67, same_model_as="count", args={"recipe": "hinton-student-kd"}),
        _claim("per_class", paper=133, args={"recipe": "hinton-student-kd-no3", "cls": 3}),
        _claim("rate", paper=47.3, unit="% errors", args={"recipe": "hinton-student-kd-only78", "percent": True}),
        _claim("acc", "accuracy_pct", 74.69, ACC, "% acc", args={"recipe": "tutorial-deepnn"}),
        _claim("other_metric", "error_ratio", 0.5, Threshold("<=", 0.6),
               args={"numerator": "hinton-student-kd", "denominator": "hinton-student-hard"}),
        _claim("no_total", paper=44, args={"recipe": "blog-cnn"}),
    ]
    # the re-measuring claim comes first: the claim of its own still wins
    verdicts = [_verdict(c, "PASS") for c in [claims[1], claims[0], *claims[2:]]]
    lines = paper_error_pct(verdicts, {"hinton-student-kd": 10000, "hinton-student-kd-no3": 10000})
    assert lines == pytest.approx({"hinton-student-kd": 0.74, "hinton-student-kd-only78": 47.3,
                                   "tutorial-deepnn": 25.31})
    alone = paper_error_pct([verdicts[0]], {"hinton-student-kd": 10000})
    assert alone == pytest.approx({"hinton-student-kd": 0.67})


def test_report_files_list_models_provenance_and_xfail_reasons(tmp_path):
    models = [_trained(), _trained("hinton-teacher", 5, source="pinned")]
    written = write_report(tmp_path, _mixed(), models)
    md = (tmp_path / "report.md").read_text()
    assert "| detail | provenance |" in md and "hinton-student-kd s0: trained now (ab12, 9 s)" in md
    assert "same model as `my.kd`" in md
    assert "## Models" in md and ("| hinton-teacher | 0 | pinned | ab12cd34ef56 | 321 | cpu: 2 cores | "
                                  "torch 2.13.0+cpu, cpu AVX2 kernels, 2 threads | 5/10000") in md
    assert "ab12cd34ef560" not in md  # weights shown as a 12-character prefix
    assert "the shift was tuned differently" in md and "`my.surprise` (XPASS" in md
    assert "hinton-student-kd (seed 0): 7 errors" in md
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["verdict"] for c in data["claims"]] == ["PASS", "PASS", "FAIL", "XFAIL", "XPASS", "REPORT", "SKIP"]
    assert data["summary"] == summary_line(_mixed()) and data["budget"] == "ci"
    assert "same in every budget" in data["note"]
    by_recipe = {m["recipe"]: m for m in data["models"]}
    assert by_recipe["hinton-student-kd"]["curve"] == [20, 7]
    assert by_recipe["hinton-teacher"]["source"] == "pinned" and by_recipe["hinton-teacher"]["train_seconds"] == 321
    assert by_recipe["hinton-teacher"]["weights"].startswith("ab12cd34ef56")
    assert {"key", "machine", "test_errors", "seed"} <= set(by_recipe["hinton-teacher"])
    pngs = [p for p in written if p.endswith(".png")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not pngs
    else:
        assert {p.split("/")[-1] for p in pngs} == {"confusion.png", "curves-mnist.png"}
        assert all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in pngs)
        assert "![curves-mnist](curves-mnist.png)" in md


def test_markdown_without_models_or_pictures():
    md = markdown([_verdict(_claim("a"), "PASS")], [], [])
    assert "## Pictures" not in md and "## Declared unreproducible" not in md and "| a | 74 |" in md


def test_seeded_claims_train_each_seed_once_at_the_labs_offset(tmp_path):
    """Calibration at offset 3 must train students 45, 46, 47 (not the offset added twice)."""
    from kdverify.claims.lab import ClaimsLab
    from kdverify.claims.measures import mean_accuracy_gain

    lab = ClaimsLab(cache_dir=tmp_path, seed_offset=3, progress=None)
    asked: list[tuple[str, int]] = []

    def fake_get(spec):
        recipe = spec.recipe
        asked.append((recipe.name, recipe.seed))
        errors = 500 if recipe.name == "tutorial-lightnn" else 400
        confusion = torch.diag(torch.full((10,), 100))
        confusion[0, 1] = errors  # 1000 + errors test images, `errors` of them wrong
        return Trained(recipe, "k", Evaluation(confusion), [], model=HintonMLP(16))

    lab.dataset = lambda name: None
    lab.cache.get = fake_get
    base = get_recipe("tutorial-lightnn", "ci").seed
    m = mean_accuracy_gain(lab, "tutorial-lightnn-kd", "tutorial-lightnn", seeds=3)
    assert sorted({seed for name, seed in asked if name != "tutorial-deepnn"}) == [base + 3, base + 4, base + 5]
    assert m.value > 0  # 400 errors beat 500 at every seed


def test_a_users_claims_without_published_numbers_are_not_called_published():
    mine = dataclasses.replace(_claim("my.own"), paper_value=None)
    note = budget_note([_verdict(mine, "PASS")])
    assert "Thresholds are the published numbers" not in note and "none of these claims has a published number" in note
    text = markdown([_verdict(mine, "PASS")], [], [])
    assert "Confusion matrices" not in text


def test_a_claim_that_was_not_measured_shows_its_reference_range_and_is_not_flagged_outside_it(tmp_path):
    """A skipped built-in claim (no data, or --kd-gate-only) still shows what the committed sample holds."""
    from kdverify.claims.lab import ClaimsLab
    from kdverify.claims.paper import CLAIMS_BY_ID

    lab = ClaimsLab(None, "ci", "cpu", tmp_path, progress=None)
    skipped = lab.not_measured(CLAIMS_BY_ID["blog.cnn"], "--kd-gate-only: not trained here")
    assert skipped.verdict == "SKIP" and skipped.reference["n"] >= 2 and not skipped.outside_reference
    assert reference_text(skipped).startswith(f"{skipped.reference['min']:g}-{skipped.reference['max']:g} (n=")
    mine = lab.not_measured(dataclasses.replace(CLAIMS_BY_ID["blog.cnn"], statement="my own"), "no data")
    assert not mine.reference  # a user's claim sharing a built-in id: the committed sample is not about it
