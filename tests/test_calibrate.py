"""`kdverify calibrate`: the per-claim margins it prints, its --out refusal, and a user's own claims."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdverify.claims.calibrate import calibrate, format_stats, seed_stats
from kdverify.claims.core import Threshold
from kdverify.cli import main
from kdverify.errors import KdverifyError


def test_error_count_margin_is_the_worst_seed_and_a_share_of_the_threshold():
    stats = seed_stats([60, 66, 63], Threshold("<=", 74, "paper x 1.10"), "errors")
    assert (stats["min"], stats["max"], stats["mean"]) == (60, 66, 63)
    assert stats["worst_margin"] == 8 and stats["worst_margin_pct"] == pytest.approx(100 * 8 / 74)
    line = format_stats("hinton.student_kd", [60, 66, 63], stats)
    assert "values 60, 66, 63" in line and "min 60 max 66 mean 63" in line
    assert "threshold <= 74 (paper x 1.10)" in line and "worst-seed margin 8 (10.8% of the threshold)" in line
    assert "headroom" not in line


def test_tight_and_failing_error_counts_are_flagged():
    tight = seed_stats([60, 70], Threshold("<=", 74, "paper x 1.10"), "errors")
    assert "worst-seed margin 4 (5.4% of the threshold; less headroom than 10%)" in format_stats("a", [60, 70], tight)
    over = seed_stats([80], Threshold("<=", 74), "errors on 3s")
    assert over["worst_margin"] == -6 and "less headroom" in format_stats("a", [80], over)


def test_at_least_thresholds_and_other_units_get_no_percentage():
    stats = seed_stats([69.5, 70.1], Threshold(">=", 68.26, "tutorial - 2 pt"), "% acc")
    assert stats["worst_margin"] == pytest.approx(1.24) and "worst_margin_pct" not in stats
    line = format_stats("tutorial.kd", [69.5, 70.1], stats)
    assert "worst-seed margin 1.24  std" in line and ">= 68.26 (tutorial - 2 pt)" in line
    assert "% of the threshold" not in format_stats("u", [1.0], seed_stats([1.0], Threshold(">", 0), "furlongs"))


def test_out_is_never_overwritten_without_force(tmp_path):
    out = tmp_path / "calib.json"
    out.write_text("keep me")
    with pytest.raises(KdverifyError, match="--force"):
        calibrate([0], data_root=str(tmp_path), cache_dir=str(tmp_path), out=out)
    result = CliRunner().invoke(main, ["calibrate", "--seeds", "0", "--out", str(out), "--data-root", str(tmp_path),
                                       "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "exists; pass --force" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert out.read_text() == "keep me"


def test_unknown_claim_id_is_refused_before_training(tmp_path):
    result = CliRunner().invoke(main, ["calibrate", "--claim", "nope.claim", "--data-root", str(tmp_path),
                                       "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "unknown claim id(s) nope.claim" in result.output


def test_every_seed_offset_is_measured_and_the_threshold_comes_from_the_claim_never_the_runs(tmp_path, monkeypatch):
    """One lab per seed offset (given as repeated --seeds), every claim measured in each; the margins are taken to
    the claim's own threshold (the data variant's), whatever the runs measured, and only --out is written."""
    from types import SimpleNamespace

    import kdverify.claims.lab
    from kdverify.claims.core import Claim

    claims = [Claim("c.hard", "me", "few errors", "errors_on_test", {"recipe": "r"}, None, "errors",
                    Threshold("<=", 100, "mine")),
              Claim("c.acc", "me", "accurate", "accuracy_pct", {"recipe": "r"}, None, "% acc",
                    Threshold(">=", 70.0, "mine", 60.0, "stand-in"))]
    measured = {("c.hard", 0): 90, ("c.hard", 3): 120, ("c.acc", 0): 65.0, ("c.acc", 3): 75.0}
    offsets = []

    class FakeLab:
        def __init__(self, *args, seed_offset=0, **kwargs):
            offsets.append(seed_offset)
            self.offset = seed_offset

        def check(self, claim):
            value = measured[claim.id, self.offset]
            threshold = claim.threshold.for_data("cifar10-jpeg-q75")  # what a lab on the stand-in applies
            return SimpleNamespace(measured=value, threshold=threshold, detail="", verdict="?")

    monkeypatch.setattr(kdverify.claims.lab, "ClaimsLab", FakeLab)
    monkeypatch.chdir(tmp_path)
    results = calibrate([0, 3], claims=claims, out=tmp_path / "c.json")
    assert offsets == [0, 3]
    assert results["c.hard"]["values"] == [90, 120] and results["c.hard"]["threshold"] == "<= 100"
    assert results["c.hard"]["worst_margin"] == -20 and results["c.hard"]["max"] == 120
    assert results["c.acc"]["threshold"] == ">= 60" and results["c.acc"]["worst_margin"] == 5.0
    assert json.loads((tmp_path / "c.json").read_text())["claims"]["c.hard"]["values"] == [90, 120]
    assert claims[0].threshold.value == 100 and [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_calibrate_measures_a_users_own_claims_and_writes_where_told(tmp_path, monkeypatch):
    """`--claims MODULE:NAME` with `--import`: a user's claims on a user's recipes, written only to --out."""
    from click.testing import CliRunner

    from kdverify.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "my_claims.py").write_text(
        "import importlib, tiny_project\nimportlib.reload(tiny_project)\n"
        "from kdverify.claims.core import Claim, Threshold\n"
        "CLAIMS = [Claim('my.hard', 'me', 'learns', 'errors_on_test', {'recipe': 'tiny-hard'}, None, 'errors',"
        " Threshold('<=', 200, 'mine'))]\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "calibration.json"
    result = CliRunner().invoke(main, ["--import", "my_claims", "calibrate", "--claims", "my_claims:CLAIMS",
                                       "--seeds", "0", "--seeds", "1", "--budget", "paper", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "my.hard" in result.output and "worst-seed margin" in result.output
    measured = json.loads(out.read_text())["claims"]["my.hard"]
    assert len(measured["values"]) == 2 and measured["threshold"] == "<= 200"
    result = CliRunner().invoke(main, ["--import", "my_claims", "calibrate", "--claims", "my_claims:NOPE",
                                       "--seeds", "0"])
    assert result.exit_code == 1 and "has no attribute 'NOPE'" in result.output


def test_several_seeds_also_get_the_statistical_verdict():
    stats = seed_stats([150, 158, 166], Threshold("<=", 161, "paper x 1.10"), "errors")
    assert stats["n"] == 3 and stats["std"] == pytest.approx(8.0) and stats["statistical_verdict"] == "INCONCLUSIVE"
    line = format_stats("hinton.student_hard", [150, 158, 166], stats)
    assert line.endswith("std 8, 95% bound on the mean 171.5: INCONCLUSIVE over 3 seeds")  # 158 + 2.92 * 8 / sqrt 3
    assert seed_stats([140, 146, 152], Threshold("<=", 161), "errors")["statistical_verdict"] == "PASS"
