"""`pytest -m claims -n 2`: one training per recipe across workers, one table and one report, as a serial run.

Tiny synthetic recipes registered by the test project's own module (`--kd-import`), so this runs in
seconds without any data.
"""

import json

import pytest

pytest.importorskip("xdist")

pytestmark = pytest.mark.processes

TINY_CLAIMS = '''
import pytest

from kdverify.claims.core import Claim, Threshold

CLAIMS = [Claim(f"tiny.{r}", "test", f"{r} learns", "errors_on_test", {"recipe": r}, None, "errors",
                Threshold("<=", 200, "all of them")) for r in ("tiny-teacher", "tiny-hard", "tiny-kd-0",
                                                                "tiny-kd-1", "tiny-kd-2")]


@pytest.mark.claims
class TestTinyTeacher:
    @pytest.mark.parametrize("claim", [c for c in CLAIMS if c.id != "tiny.tiny-hard"], ids=lambda c: c.id)
    def test_claim(self, claim, kd_claim):
        kd_claim(claim)


@pytest.mark.claims
class TestTinyHard:
    def test_claim(self, kd_claim):
        kd_claim(CLAIMS[1])
'''


@pytest.fixture
def tiny(tiny_pytester, tmp_path, monkeypatch):
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "user-cache"))
    tiny_pytester.makepyfile(test_tiny=TINY_CLAIMS)
    return tiny_pytester


def _run(tiny, tmp_path, name, *xdist_options):
    """Serially in this process; with xdist's options in a process of its own (its workers are processes anyway)."""
    cache, report = tmp_path / f"cache-{name}", tmp_path / f"report-{name}"
    run = tiny.runpytest_subprocess if xdist_options else tiny.runpytest
    result = run("--kd-import", "tiny_project", "--kd-cache", str(cache), "--kd-report", str(report),
                 "--kd-deterministic", "-p", "no:cacheprovider", *xdist_options)
    return result, json.loads((report / "report.json").read_text()), cache


def _content(report):
    claims = [{k: c[k] for k in ("claim", "measured", "threshold", "verdict", "detail")} for c in report["claims"]]
    models = sorted((m["recipe"], m["seed"], m["key"], m["weights"], m["test_errors"]) for m in report["models"])
    return claims, models


def test_two_workers_train_each_recipe_once_and_report_like_a_serial_run(tiny, tmp_path):
    serial, serial_report, _ = _run(tiny, tmp_path, "serial")
    serial.assert_outcomes(passed=5)
    parallel, parallel_report, cache = _run(tiny, tmp_path, "xdist", "-n", "2")
    parallel.assert_outcomes(passed=5)
    out = parallel.stdout.str()
    assert out.count("kdverify claims (ci budget)") == 1  # one table, printed by the controller
    assert "claims: 5 passed, 0 failed" in out
    assert _content(parallel_report) == _content(serial_report)  # same claims, same order, same weights
    err = parallel.stderr.str()
    workers = {line.split()[1]: line.split()[0] for line in err.splitlines() if line.startswith("[gw")}
    assert len({workers[f"[tiny-{r}"] for r in ("teacher", "kd-0", "kd-1", "kd-2")}) == 1, err  # one teacher group,
    assert workers["[tiny-hard"] != workers["[tiny-teacher"], err  # one worker; the other group on the other
    # every recipe trained exactly once across both workers: one progress line per epoch
    for recipe, epochs in (("tiny-teacher", 3), ("tiny-hard", 2), ("tiny-kd-0", 2)):
        assert err.count(f"[{recipe} seed") == epochs, err
    assert len(list(cache.glob("*.pt"))) == 5
