"""--kd-executor ray on a local Ray runtime (loopback only), with tiny recipes: same weights as a local run,
teachers before students, a raising task and killed workers as ERROR rows, a bad address as one line."""

import ipaddress
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray_support import make_ray_project, train_in_this_process  # noqa: E402


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
def test_a_ray_run_has_a_local_runs_verdicts_weights_and_loopback_only(ray_project, tmp_path):
    pytester, ray_tmp = ray_project
    cache = tmp_path / "cache"
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper",
                                        f"--kd-cache={cache}", "--kd-executor", "ray", "--kd-deterministic",
                                        "-k", "not slow", f"--kd-report={tmp_path / 'report'}", timeout=600)
    run.assert_outcomes(passed=3, failed=2)  # test_slow deselected: -k "not slow"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    errors = {v["claim"]: v["detail"] for v in report["claims"] if v["verdict"] == "ERROR"}
    assert errors == {
        "ray.raising": "KdverifyError: Ray task raising seed 0 failed: RuntimeError: boom in forward",
        "ray.always_dies": errors.get("ray.always_dies", "")}, errors
    assert errors["ray.always_dies"].startswith("KdverifyError: Ray task always_dies seed 0 failed after 2 retries: "
                                                "WorkerCrashedError")
    assert (tmp_path / "marks" / "niceness").read_text() == "0"  # training tasks are not Ray's niced background work
    machines = {m["recipe"]: m.get("machine", "") for m in report["models"]}
    assert all("Ray node" in machines[name] for name in ("raytiny-teacher", "raytiny-kd", "dies_once")), machines
    files = {p.name.split("-seed")[0] for p in cache.glob("*.pt")}
    assert files == {"raytiny-teacher", "raytiny-kd", "dies_once"}  # nothing half-written from the failures

    # the same recipes trained locally (deterministic, another cache) have the same weights, bit for bit, and the
    # same keys: a student's key names its teacher's weights, so Ray fed the student the teacher it had just trained
    trained_locally = train_in_this_process(pytester, tmp_path / "local-cache",
                                            ["raytiny-teacher", "raytiny-kd", "dies_once"], deterministic=True)
    assert {t.source for t in trained_locally.values()} == {"trained"}
    assert ({name: (t.key, t.weights) for name, t in trained_locally.items()}
            == {m["recipe"]: (m["key"], m["weights"]) for m in report["models"]})

    addresses = _addresses(ray_tmp)
    assert addresses == {"127.0.0.1"}, f"Ray bound or talked on {sorted(addresses)}"


def test_plan_prints_the_models_and_trains_nothing(ray_project, tmp_path):
    pytester, _ = ray_project
    run = pytester.runpytest("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper",
                             f"--kd-cache={tmp_path / 'cache'}", "--kd-plan", "--kd-seeds", "2")
    assert run.ret == 0
    run.stdout.fnmatch_lines(["model*seed*teacher*cached*expected*needed by*", "raytiny-teacher*0*-*no*",
                              "raytiny-kd*0*raytiny-teacher s0*no*", "raytiny-kd*1*raytiny-teacher s0*no*",
                              "*paper budget, 2 seed(s): 11 models, 11 to train*"])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_an_unreachable_cluster_is_one_line_before_collection(ray_project):
    pytester, _ = ray_project
    run = pytester.runpytest("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-executor", "ray",
                             "--kd-ray-address", "127.0.0.1:1")
    assert run.ret == 4  # a usage error: nothing collected, nothing trained
    err = run.stderr.str()
    assert "--kd-ray-address 127.0.0.1:1: cannot start or reach Ray" in err and "Traceback" not in err
