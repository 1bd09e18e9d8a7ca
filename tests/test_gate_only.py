"""`--kd-gate-only`: a run trains only what the claims it can gate need; a claim it can only report is measured
where its models are at hand (needed by a gated claim, or cached) and skipped with the models it would train
otherwise. Tiny synthetic recipes (`tests/tiny_project.py`), so this runs in seconds without data."""

import json

from kdverify.claims.core import Claim, Threshold
from kdverify.claims.plan import models_beyond_the_gate

ANY = Threshold("<=", 200, "all of them")

CLAIMS = '''
import pytest
from kdverify.claims.core import Claim, Threshold

ANY = Threshold("<=", 200, "all of them")
CLAIMS = [
    Claim("tiny.gated", "test", "kd-0 learns", "errors_on_test", {"recipe": "tiny-kd-0"}, None, "errors", ANY),
    Claim("tiny.shares", "test", "kd-0 again, reported", "errors_on_test", {"recipe": "tiny-kd-0"}, None, "errors",
          ANY, gated=False),
    Claim("tiny.own", "test", "hard, reported", "errors_on_test", {"recipe": "tiny-hard"}, None, "errors", ANY,
          gated=False),
    Claim("tiny.from3", "test", "kd-1, gated from 3 seeds", "errors_on_test", {"recipe": "tiny-kd-1"}, None,
          "errors", ANY, min_seeds=3),
]

@pytest.mark.claims
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)
'''


def test_models_beyond_the_gate_are_those_only_ungated_claims_need(tiny_registered):
    gated = Claim("g", "test", "", "errors_on_test", {"recipe": "tiny-kd-0"}, None, "errors", ANY)
    shares = Claim("s", "test", "", "errors_on_test", {"recipe": "tiny-kd-0"}, None, "errors", ANY, gated=False)
    own = Claim("o", "test", "", "errors_on_test", {"recipe": "tiny-kd-1"}, None, "errors", ANY, gated=False)
    from3 = Claim("f", "test", "", "errors_on_test", {"recipe": "tiny-hard"}, None, "errors", ANY, min_seeds=3)
    beyond = models_beyond_the_gate([gated, shares, own, from3], "ci", seeds=1)
    # the teacher of tiny-kd-1 is needed by the gated claim's student too: only the student is beyond the gate
    assert {cid: [(s.name, s.seed) for s in specs] for cid, specs in beyond.items()} == {
        "o": [("tiny-kd-1", 1)], "f": [("tiny-hard", 1)]}
    assert "f" not in models_beyond_the_gate([gated, from3], "ci", seeds=3)  # at 3 seeds it gates


def _claims(report):
    return {c["claim"]: c for c in json.loads((report / "report.json").read_text())["claims"]}


def test_gate_only_skips_reported_claims_whose_models_nothing_gated_needs_until_they_are_cached(
        tiny_pytester, tmp_path, monkeypatch):
    pytester = tiny_pytester
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "user-cache"))
    pytester.makepyfile(test_gate=CLAIMS)
    common = ["--kd-import", "tiny_project", f"--kd-cache={tmp_path / 'cache'}", "-p", "no:cacheprovider"]

    gate = tmp_path / "gate"
    pytester.runpytest(*common, "--kd-gate-only", f"--kd-report={gate}").assert_outcomes(passed=2, skipped=2)
    claims = _claims(gate)
    assert claims["tiny.gated"]["verdict"] == "PASS"
    assert claims["tiny.shares"]["verdict"] == "REPORT"  # its model was trained for tiny.gated: measured
    assert claims["tiny.own"]["verdict"] == "SKIP" and "tiny-hard s1" in claims["tiny.own"]["detail"]
    assert claims["tiny.own"]["detail"].startswith("--kd-gate-only: tiny.own is only reported here (not gated)")
    assert claims["tiny.from3"]["verdict"] == "SKIP" and "gated from 3 seeds, this run has 1" in \
        claims["tiny.from3"]["detail"]
    trained = {m["recipe"] for m in json.loads((gate / "report.json").read_text())["models"]}
    assert trained == {"tiny-teacher", "tiny-kd-0"}

    full = tmp_path / "full"  # without the option every claim is measured (and its models trained)
    pytester.runpytest(*common, f"--kd-report={full}").assert_outcomes(passed=4)
    assert _claims(full)["tiny.own"]["verdict"] == "REPORT"

    again = tmp_path / "again"  # now cached: measuring the reported claims costs nothing, so they are measured
    pytester.runpytest(*common, "--kd-gate-only", f"--kd-report={again}").assert_outcomes(passed=4)
    assert _claims(again)["tiny.own"]["measured"] == _claims(full)["tiny.own"]["measured"]


def test_gate_only_leaves_the_skipped_claims_models_out_of_the_plan(tiny_pytester, tmp_path, monkeypatch):
    pytester = tiny_pytester
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    pytester.makepyfile(test_gate=CLAIMS)
    result = pytester.runpytest("--kd-import", "tiny_project", f"--kd-cache={tmp_path / 'cache'}", "--kd-plan",
                                "--kd-gate-only", "-p", "no:cacheprovider")
    assert "tiny-kd-0" in result.stdout.str()
    assert "tiny-hard" not in result.stdout.str() and "tiny-kd-1" not in result.stdout.str()
