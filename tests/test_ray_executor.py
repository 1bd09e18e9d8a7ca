"""--kd-executor ray on a local Ray runtime (loopback only), with tiny recipes: same weights as a local run,
teachers before students (trained by Ray or cached), a raising task and killed workers as ERROR rows, a session
beside the Ray run sharing its cache, a bad address as one line."""

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray_support import make_ray_project, read_until, train_in_this_process  # noqa: E402


@pytest.fixture
def ray_project(pytester, tmp_path, monkeypatch):
    return make_ray_project(pytester, tmp_path, monkeypatch)


def _addresses(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            for match in re.findall(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])", path.read_text(errors="ignore")):
                try:
                    found.add(str(ipaddress.IPv4Address(match)))
                except ValueError:
                    pass
    return found


@pytest.mark.processes
def test_a_ray_run_matches_a_local_run_shares_its_cache_with_another_session_and_talks_on_loopback_only(ray_project,
                                                                                                      tmp_path):
    """One local Ray session (a Ray start costs several processes) for everything a finished run shows."""
    pytester, ray_tmp = ray_project
    cache = tmp_path / "cache"
    common = ["-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper", f"--kd-cache={cache}",
              "--kd-deterministic"]
    cached = train_in_this_process(pytester, cache, ["raytiny-cached-teacher"], deterministic=True)
    assert cached["raytiny-cached-teacher"].source == "trained"
    ray_run = subprocess.Popen([sys.executable, "-m", "pytest", *common, "--kd-executor", "ray",
                                "--kd-ray-retries", "1", f"--kd-report={tmp_path / 'report'}"], cwd=pytester.path,
                               env={**os.environ, "PYTHONPATH": str(pytester.path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = read_until(ray_run, "submitted to Ray")
        assert "kdverify: 7 model(s) submitted to Ray" in seen, seen  # the cached teacher is not trained again

        # another session on the same cache, beside the Ray run: the slow model (submitted last) is not trained
        # twice; this session waits on its entry's lock, then loads what Ray trained
        sys.modules.pop("ray_project", None)
        local = pytester.runpytest(*common, "-k", "slow", f"--kd-report={tmp_path / 'local'}")
        out = seen + ray_run.communicate(timeout=300)[0]
    finally:
        if ray_run.poll() is None:
            ray_run.kill()
    local.assert_outcomes(passed=1)
    assert "epoch" not in local.stdout.str() + local.stderr.str()
    local_models = json.loads((tmp_path / "local" / "report.json").read_text())["models"]
    assert [(m["recipe"], m["source"]) for m in local_models] == [("slow", "cache")]

    assert ray_run.returncode == 1, out  # the two ERROR claims below
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    verdicts = {v["claim"]: v["verdict"] for v in report["claims"]}
    assert verdicts == {"ray.kd": "PASS", "ray.teacher": "PASS", "ray.raising": "ERROR", "ray.dies_once": "PASS",
                        "ray.always_dies": "ERROR", "ray.cached_kd": "PASS", "ray.slow": "PASS"}, verdicts
    errors = {v["claim"]: v["detail"] for v in report["claims"] if v["verdict"] == "ERROR"}
    assert errors["ray.raising"] == "KdverifyError: Ray task raising seed 0 failed: RuntimeError: boom in forward"
    assert errors["ray.always_dies"].startswith("KdverifyError: Ray task always_dies seed 0 failed after 1 retry: "
                                                "WorkerCrashedError"), errors
    assert (tmp_path / "marks" / "niceness").read_text() == "0"  # training tasks are not Ray's niced background work
    models = {m["recipe"]: m for m in report["models"]}
    ray_trained = ("raytiny-teacher", "raytiny-kd", "dies_once", "raytiny-cached-kd", "slow")
    assert {name: m["source"] for name, m in models.items()} == {**dict.fromkeys(ray_trained, "trained"),
                                                                  "raytiny-cached-teacher": "cache"}
    assert all("Ray node" in models[name].get("machine", "") for name in ray_trained), models
    files = sorted(p.name.split("-seed")[0] for p in cache.glob("*.pt"))
    assert files == sorted([*ray_trained, "raytiny-cached-teacher"])  # once each, nothing half-written from failures

    # the same recipes trained locally (deterministic, another cache) have the same weights, bit for bit, and the
    # same keys: a student's key names its teacher's weights, so Ray fed each student the teacher it had just
    # trained, or the one the driver's cache held
    trained_locally = train_in_this_process(pytester, tmp_path / "local-cache", list(models), deterministic=True)
    assert {t.source for t in trained_locally.values()} == {"trained"}
    assert ({name: (t.key, t.weights) for name, t in trained_locally.items()}
            == {name: (m["key"], m["weights"]) for name, m in models.items()})

    addresses = _addresses(ray_tmp)
    assert addresses == {"127.0.0.1"}, f"Ray bound or talked on {sorted(addresses)}"


def test_plan_prints_the_models_and_trains_nothing(ray_project, tmp_path):
    pytester, _ = ray_project
    run = pytester.runpytest("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper",
                             f"--kd-cache={tmp_path / 'cache'}", "--kd-plan", "--kd-seeds", "2")
    assert run.ret == 0
    run.stdout.fnmatch_lines(["model*seed*teacher*cached*expected*needed by*", "raytiny-teacher*0*-*no*",
                              "raytiny-kd*0*raytiny-teacher s0*no*", "raytiny-kd*1*raytiny-teacher s0*no*",
                              "raytiny-cached-kd*1*raytiny-cached-teacher s0*no*",
                              "*paper budget, 2 seed(s): 14 models, 14 to train*"])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_an_unreachable_cluster_is_one_line_before_collection(ray_project):
    pytester, _ = ray_project
    run = pytester.runpytest("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-executor", "ray",
                             "--kd-ray-address", "127.0.0.1:1")
    assert run.ret == 4  # a usage error: nothing collected, nothing trained
    err = run.stderr.str()
    assert "--kd-ray-address 127.0.0.1:1: cannot start or reach Ray" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["-1", "two", "101"])
def test_ray_retries_must_be_a_count(pytester, value):
    result = pytester.runpytest("--kd-ray-retries", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--kd-ray-retries*'{value}' is not a retry count from 0 to 100*"])
