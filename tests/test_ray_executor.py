"""--kd-executor ray on a local Ray runtime (loopback only), with tiny recipes: same weights as a local run,
teachers before students, a raising task and killed workers as ERROR rows, a bad address as one line."""

import ipaddress
import json
import re
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

PROJECT = '''
import os
import sys

from kdverify import data
from kdverify.data import Dataset
from kdverify.train.models import HintonMLP, register_model
from kdverify.train.recipes import Recipe, register_recipe
from tiny_project import _split  # the tiny synthetic images of tests/tiny_project.py


def _on_a_ray_worker():
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray._private.worker.global_worker.mode == ray.WORKER_MODE


class Raising(HintonMLP):
    def forward(self, x):
        raise RuntimeError("boom in forward")


class DiesOnce(HintonMLP):
    """Kills its worker the first time it runs on one (a node lost mid-task), then trains normally."""

    def forward(self, x):
        mark = os.path.join(os.environ["RAY_TEST_MARKS"], "died-once")
        if _on_a_ray_worker() and not os.path.exists(mark):
            open(mark, "w").close()
            os._exit(1)
        return super().forward(x)


class Slow(HintonMLP):
    def forward(self, x):
        if _on_a_ray_worker():
            import time
            time.sleep(0.5)
        return super().forward(x)


class AlwaysDies(HintonMLP):
    def forward(self, x):
        if _on_a_ray_worker():
            os._exit(1)
        return super().forward(x)


data.register_dataset("raytiny", lambda root=None: Dataset("raytiny", "raytiny-synthetic", "raytiny-0",
                      tuple(map(str, range(10))), (0.5,), (0.5,), _split(600, 0), _split(200, 1)), replace=True)
for name, cls in (("raising_mlp", Raising), ("dies_once_mlp", DiesOnce), ("always_dies_mlp", AlwaysDies),
                  ("slow_mlp", Slow)):
    register_model(name, cls, replace=True)
MLP = dict(hidden=16)
register_recipe(Recipe("raytiny-teacher", "raytiny", "hinton_mlp", epochs=3, lr=0.05, arch_kwargs=MLP), replace=True)
register_recipe(Recipe("raytiny-kd", "raytiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP, objective="kd",
                       teacher="raytiny-teacher", temperature=4.0, soft_weight=0.7), replace=True)
for arch in ("raising_mlp", "dies_once_mlp", "always_dies_mlp", "slow_mlp"):
    register_recipe(Recipe(arch.replace("_mlp", ""), "raytiny", arch, epochs=1, lr=0.05, arch_kwargs=MLP),
                    replace=True)
'''

CLAIMS = '''
import pytest

from kdverify.claims.core import Claim, Threshold

def claim(id, recipe):
    return Claim(id, "test", id, "errors_on_test", {"recipe": recipe}, None, "errors", Threshold("<=", 10_000))

SLOW = [claim("ray.slow", "slow")]
CLAIMS = [claim("ray.kd", "raytiny-kd"), claim("ray.teacher", "raytiny-teacher"), claim("ray.raising", "raising"),
          claim("ray.dies_once", "dies_once"), claim("ray.always_dies", "always_dies")]

@pytest.mark.claims
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)


@pytest.mark.claims
@pytest.mark.parametrize("claim", SLOW, ids=lambda c: c.id)
def test_slow(claim, kd_claim):
    kd_claim(claim)
'''


@pytest.fixture
def ray_project(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(ray_project=PROJECT, test_ray=CLAIMS,
                        tiny_project=(Path(__file__).parent / "tiny_project.py").read_text())
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("RAY_TEST_MARKS", str(marks))
    ray_tmp = Path(tempfile.mkdtemp(prefix="kdray", dir="/tmp"))  # short: Ray's unix sockets live under it
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return pytester, ray_tmp


def _sealed(path: Path) -> dict[str, str]:
    """A checkpoint's verified weights sha256 and its teacher's, read in a fresh process (pytester drops modules
    a test imports, and torch does not survive being imported twice in one process)."""
    import subprocess
    import sys

    code = ("import json, sys; from kdverify.cache.checkpoint import load_checkpoint; "
            "c = load_checkpoint(sys.argv[1]); "
            "print(json.dumps({'weights': c.weights_sha256, 'teacher': c.metrics.get('teacher_weights_sha256')}))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


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
    machines = {m["recipe"]: m.get("machine", "") for m in report["models"]}
    assert all("Ray node" in machines[name] for name in ("raytiny-teacher", "raytiny-kd", "dies_once")), machines
    # teachers before students: the student's task was fed the teacher's result, so its entry names that teacher
    files = {p.name.split("-seed")[0]: p for p in cache.glob("*.pt")}
    assert set(files) == {"raytiny-teacher", "raytiny-kd", "dies_once"}  # nothing half-written from the failures
    teacher, student = _sealed(files["raytiny-teacher"]), _sealed(files["raytiny-kd"])
    assert student["teacher"] == teacher["weights"]

    # the same recipes trained locally (CLI, deterministic) have the same weights, bit for bit
    for args in (["train", "--recipe", "raytiny-teacher", "--out", "t.pt"],
                 ["distill", "--teacher", "t.pt", "--recipe", "raytiny-kd", "--out", "s.pt"]):
        done = pytester.run("kdverify", "--import", "ray_project", *args, "--budget", "paper", "--deterministic",
                            timeout=300)
        assert done.ret == 0, done.stderr.str()
    assert _sealed(pytester.path / "t.pt")["weights"] == teacher["weights"]
    assert _sealed(pytester.path / "s.pt")["weights"] == student["weights"]

    # a local session on the same cache trains nothing: it finds every entry the Ray run wrote
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget",
                                          "paper", f"--kd-cache={cache}", "--kd-deterministic", "-k",
                                          "kd or teacher or dies_once", timeout=300)
    again.assert_outcomes(passed=3, deselected=3)
    assert "epoch" not in again.stdout.str() + again.stderr.str()

    addresses = _addresses(ray_tmp)
    assert addresses == {"127.0.0.1"}, f"Ray bound or talked on {sorted(addresses)}"


def test_plan_prints_the_models_and_trains_nothing(ray_project, tmp_path):
    pytester, _ = ray_project
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper",
                                        f"--kd-cache={tmp_path / 'cache'}", "--kd-plan", "--kd-seeds", "2")
    assert run.ret == 0
    run.stdout.fnmatch_lines(["model*seed*teacher*cached*expected*needed by*", "raytiny-teacher*0*-*no*",
                              "raytiny-kd*0*raytiny-teacher s0*no*", "raytiny-kd*1*raytiny-teacher s0*no*",
                              "*paper budget, 2 seed(s): 11 models, 11 to train*"])
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_an_unreachable_cluster_is_one_line_before_collection(ray_project):
    pytester, _ = ray_project
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-executor", "ray",
                                        "--kd-ray-address", "127.0.0.1:1", timeout=300)
    assert run.ret == 4  # a usage error: nothing collected, nothing trained
    err = run.stderr.str()
    assert "--kd-ray-address 127.0.0.1:1: cannot start or reach Ray" in err and "Traceback" not in err


def test_ctrl_c_cancels_the_tasks_and_leaves_no_cache_entry(ray_project, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pytester, ray_tmp = ray_project
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kd-import", "ray_project",
                             "--kd-budget", "paper", f"--kd-cache={cache}", "--kd-executor", "ray", "-k", "slow"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(pytester.path)})
    seen = ""
    deadline = time.monotonic() + 240
    while "submitted to Ray" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "submitted to Ray" in seen, seen
    time.sleep(3)  # the task is running (a slow model: 0.5 s a batch)
    proc.send_signal(signal.SIGINT)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "Traceback" not in out.split("KeyboardInterrupt")[0]
    assert not list(cache.glob("*.pt")) and not list(cache.glob(".*.tmp")), list(cache.iterdir())
    left = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
    assert not left, f"Ray processes of the session still running: {left}"


def test_two_sessions_on_one_cache_train_each_key_once_and_a_cached_teacher_travels_to_its_student(ray_project,
                                                                                                    tmp_path):
    import os
    import subprocess
    import sys
    import time

    pytester, _ = ray_project
    cache = tmp_path / "cache"
    common = ["-p", "no:cacheprovider", "--kd-import", "ray_project", "--kd-budget", "paper", f"--kd-cache={cache}"]
    first = pytester.runpytest_subprocess(*common, "-k", "ray.teacher", timeout=300)  # a teacher cached locally
    first.assert_outcomes(passed=1, deselected=5)
    env = {**os.environ, "PYTHONPATH": str(pytester.path)}
    ray_run = subprocess.Popen([sys.executable, "-m", "pytest", *common, "--kd-executor", "ray", "-k", "slow or kd",
                                f"--kd-report={tmp_path / 'ray-report'}"], cwd=pytester.path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = "", time.monotonic() + 240
    while "submitted to Ray" not in seen and time.monotonic() < deadline:
        seen += ray_run.stdout.readline()
    assert "kdverify: 2 model(s) submitted to Ray" in seen, seen  # the cached teacher is not trained again
    local = subprocess.run([sys.executable, "-m", "pytest", *common, "-k", "slow", f"--kd-report={tmp_path / 'local'}"],
                           cwd=pytester.path, env=env, capture_output=True, text=True, timeout=300)
    out = seen + ray_run.communicate(timeout=300)[0]
    assert ray_run.returncode == 0, out
    assert local.returncode == 0, local.stdout + local.stderr
    assert "epoch" not in local.stdout + local.stderr  # it waited on the entry's lock, then loaded Ray's model
    models = json.loads((tmp_path / "local" / "report.json").read_text())["models"]
    assert [(m["recipe"], m["source"]) for m in models] == [("slow", "cache")]
    assert len(list(cache.glob("slow-seed0-*.pt"))) == 1
    student = json.loads((tmp_path / "ray-report" / "report.json").read_text())["models"]
    assert {m["recipe"]: m["source"] for m in student} == {"raytiny-teacher": "cache", "raytiny-kd": "trained",
                                                          "slow": "trained"}
