"""Verdicts over seeds: the bounds of `kdverify.claims.sampling`, and `--kd-seeds N` / ERROR rows through pytest."""

import json
import math

import pytest

from kdverify.claims.sampling import INCONCLUSIVE, Sample, is_fragile, statistical_verdict


def at_most(limit):
    return lambda v: v <= limit


def test_confidence_bound_is_mean_plus_t_s_over_root_n_on_the_bad_side():
    s = Sample((140.0, 146.0, 152.0), "<=")
    t2 = 2.919985580355516  # t(0.95, 2 degrees of freedom)
    assert s.mean == 146 and s.std == 6
    assert s.confidence_bound() == pytest.approx(146 + t2 * 6 / math.sqrt(3))
    low = Sample((70.0, 72.0, 74.0), ">=")
    assert low.confidence_bound() == pytest.approx(72 - t2 * 2 / math.sqrt(3))


def test_statistical_verdict_pass_fail_inconclusive():
    assert statistical_verdict(Sample((140.0, 141.0, 142.0), "<="), at_most(161)) == "PASS"
    assert statistical_verdict(Sample((160.0, 165.0, 170.0), "<="), at_most(161)) == "FAIL"
    assert statistical_verdict(Sample((150.0, 158.0, 166.0), "<="), at_most(161)) == INCONCLUSIVE
    assert statistical_verdict(Sample((150.0,), "<="), at_most(161)) == "PASS"  # n = 1: today's verdict


def test_fragile_uses_the_stricter_of_prediction_bound_and_worst_value():
    steady = Sample((100.0, 101.0, 99.0, 100.0, 100.0), "<=")
    assert not is_fragile(steady, at_most(110))
    assert is_fragile(steady, at_most(101))  # the worst value (101) passes, but the prediction bound does not
    wide = Sample((90.0, 100.0, 110.0, 95.0, 105.0), "<=")
    # mean 100, s 7.91, t(4) 2.132: the next run's bound is 100 + 2.132 * 7.91 * sqrt(1 + 1/5) = 118.5
    assert is_fragile(wide, at_most(118)) and not is_fragile(wide, at_most(119))
    assert is_fragile(Sample((100.0,), "<="), at_most(1000))  # one value says nothing about the spread


def test_a_mean_of_k_seeds_has_a_tighter_prediction_bound_and_worst_is_the_mean_of_the_worst_k():
    s = Sample((0.2, 0.9, 1.4, -0.3, 0.6, 1.1), ">=")
    assert s.prediction_bound(3) > s.prediction_bound(1)  # toward the bad (low) side, less far
    assert s.worst(3) == pytest.approx((-0.3 + 0.2 + 0.6) / 3)
    assert s.headroom_bound(3) == min(s.prediction_bound(3), s.worst(3))


SEEDED_CLAIMS = '''
import pytest
from kdverify.claims.core import Claim, Threshold

HARD = Claim("tiny.hard", "test", "tiny-hard learns", "errors_on_test", {"recipe": "tiny-hard"}, None, "errors",
             Threshold("<=", 200, "all of them"))
TEACHER = Claim("tiny.teacher", "test", "teacher", "errors_on_test", {"recipe": "tiny-teacher"}, None, "errors",
                Threshold("<=", 200, "all of them"))
BROKEN = Claim("tiny.broken", "test", "no such recipe", "errors_on_test", {"recipe": "tiny-nope"}, None, "errors",
               Threshold("<=", 200, "all of them"))

@pytest.mark.claims
@pytest.mark.parametrize("claim", [HARD, TEACHER, BROKEN], ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)
'''


def test_kd_seeds_gives_per_seed_values_mean_and_bound_and_a_raising_claim_is_an_error_row(tiny_pytester, tmp_path,
                                                                                            monkeypatch):
    pytester = tiny_pytester
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "user-cache"))
    pytester.makepyfile(test_seeded=SEEDED_CLAIMS)
    report = tmp_path / "report"
    result = pytester.runpytest("--kd-import", "tiny_project", "--kd-cache", str(tmp_path / "cache"),
                                "--kd-report", str(report), "--kd-seeds", "3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    claims = {c["claim"]: c for c in json.loads((report / "report.json").read_text())["claims"]}
    hard, teacher, broken = claims["tiny.hard"], claims["tiny.teacher"], claims["tiny.broken"]
    assert hard["n"] == 3 and hard["seeds"] == [0, 1, 2] and len(hard["values"]) == 3
    assert hard["mean"] == pytest.approx(sum(hard["values"]) / 3) and hard["bound"] >= hard["mean"]
    assert hard["verdict"] in ("PASS", "INCONCLUSIVE") and "mean of 3 seeds; s+0:" in hard["detail"]
    assert teacher["n"] == 1 and teacher["values"] == []  # teachers stay fixed: n = 1, labelled
    assert broken["verdict"] == "ERROR" and "tiny-nope" in broken["detail"]
    summary = json.loads((report / "report.json").read_text())["summary"]
    assert "1 failed" in summary and "could not be measured" in summary
    result.stdout.fnmatch_lines(["tiny.broken*ERROR*"])
    assert "Verdicts over seeds" in (report / "report.md").read_text()


def test_kd_seeds_must_be_a_positive_count(pytester):
    result = pytester.runpytest("--kd-seeds", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kd-seeds*'0' is not a seed count from 1 to 1000*"])


RECIPE_FILE = '''
[tiny-from-toml]
dataset = "tiny"
arch = "hinton_mlp"
epochs = 1
lr = 0.05
arch_kwargs = { hidden = 16 }
'''

TOML_CLAIMS = '''
import pytest
from kdverify.claims.core import Claim, Threshold

@pytest.mark.claims
@pytest.mark.parametrize("recipe", ["tiny-from-toml", "tiny-from-option"])
def test_toml_recipe(kd_claim, recipe):
    kd_claim(Claim(f"tiny.{recipe}", "test", "a TOML recipe trains", "errors_on_test", {"recipe": recipe}, None,
                   "errors", Threshold("<=", 200, "all of them")))
'''


def test_recipe_files_reach_the_claims_by_option_and_ini(tiny_pytester, tmp_path, monkeypatch):
    """One session: the ini's kd_import and kd_recipe_file, and --kd-recipe-file on the command line, all count."""
    pytester = tiny_pytester
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "user-cache"))
    pytester.makepyfile(test_toml=TOML_CLAIMS)
    (pytester.path / "recipes.toml").write_text(RECIPE_FILE)
    (pytester.path / "option.toml").write_text(RECIPE_FILE.replace("tiny-from-toml", "tiny-from-option"))
    pytester.makeini("[pytest]\nkd_import = tiny_project\nkd_recipe_file = recipes.toml\n")
    result = pytester.runpytest("--kd-recipe-file", "option.toml", f"--kd-cache={tmp_path / 'cache'}",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    (pytester.path / "bad.toml").write_text("[x]\ndataset = 'tiny'\narch = 'hinton_mlp'\nepochs = -1\nlr = 1\n")
    result = pytester.runpytest("--kd-recipe-file", "bad.toml", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kd-recipe-file *bad.toml*epochs*"])
    assert "Traceback" not in result.stderr.str()


def test_a_claim_gated_from_several_seeds_is_reported_at_one_and_judged_at_three():
    from kdverify.claims.core import Claim, Measurement, Threshold, judge

    claim = Claim("x.kd", "test", "KD student", "errors_on_test", {"recipe": "r"}, 74, "errors",
                  Threshold("<=", 81, "paper x 1.10"), min_seeds=3)
    assert claim.judged_over == 3
    assert judge(claim, Measurement(90.0))[0] == "REPORT"  # one run: shown, never gated (it spreads too wide)
    assert judge(claim, Measurement(71.0), sample=Sample((70.0, 71.0), "<="))[0] == "REPORT"  # still too few
    assert judge(claim, Measurement(71.0), sample=Sample((70.0, 71.0, 72.0), "<="))[0] == "PASS"
    assert judge(claim, Measurement(85.0), sample=Sample((84.0, 85.0, 86.0), "<="))[0] == "FAIL"


def test_headroom_of_a_claim_gated_from_three_seeds_is_that_of_a_mean_of_three(tmp_path):
    from kdverify.claims.core import Claim, Threshold
    from kdverify.claims.references import headroom, recipe_fingerprints

    one = Claim("x.hard", "test", "hard student", "errors_on_test", {"recipe": "hinton-student-hard"}, 146, "errors",
                Threshold("<=", 161, "paper x 1.10"))
    three = Claim(**{**vars(one), "id": "x.hard3", "min_seeds": 3})
    values = [142, 153, 155, 147, 150]
    (tmp_path / "p.json").write_text(json.dumps({"format": 1, "path": "p", "provenance": {}, "claims": {
        c.id: {"values": values, "recipes": recipe_fingerprints(c)} for c in (one, three)}}))
    rows = {r.claim.id: r.status for r in headroom([one, three], folder=tmp_path)}
    assert rows == {"x.hard": "FRAGILE", "x.hard3": "ok"}
