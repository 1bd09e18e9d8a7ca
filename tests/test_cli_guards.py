"""CLI guards: bad options fail before any data is loaded, outputs are checked before training,
a failed save keeps the model, evaluate's confusion matrix and warnings, the recipes table,
--deterministic, SIGTERM/Ctrl-C, and --import. Data loading and training are stand-ins."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kdverify import data as data_module
from kdverify import io as io_module
from kdverify.cache import checkpoint as checkpoint_module
from kdverify.cache.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from kdverify.cli import main, resolve_device
from kdverify.train import determinism
from kdverify.train import loop as train_module
from kdverify.train.loop import TrainResult
from kdverify.train.metrics import Evaluation
from kdverify.train.models import build_model
from kdverify.train.recipes import BUDGETS, RECIPES, get_recipe


def run(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), **kwargs)


def assert_one_line_error(result, message: str, code: int = 1) -> None:
    """Exit `code`, no traceback, and exactly one error line, which holds `message` (progress lines may precede it)."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("kdverify: error: ")]
    assert "Traceback" not in result.output and len(errors) == 1 and message in errors[0], result.output


@pytest.fixture
def stand_ins(monkeypatch, tiny_mnist, tmp_path):
    """load_dataset and fit replaced by instant stand-ins; `calls` records what ran, in order."""
    calls: list[str] = []

    def load_dataset(name, root=None, device="cpu"):
        calls.append("load")
        return tiny_mnist

    def fit(recipe, dataset, teacher=None, progress=None):
        calls.append("fit")
        torch.manual_seed(0)
        model = build_model(recipe.arch, **recipe.arch_kwargs)
        return TrainResult(model, recipe, Evaluation(torch.diag(torch.full((10,), 50))), seconds=1.0,
                           arch_kwargs=dict(recipe.arch_kwargs))

    monkeypatch.setattr(data_module, "load_dataset", load_dataset)
    monkeypatch.setattr(train_module, "fit", fit)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "cache"))  # where a rescued model goes
    return calls


def _teacher(tmp_path: Path, tiny_mnist) -> Path:
    recipe = get_recipe("hinton-teacher")
    model = build_model(recipe.arch, **recipe.arch_kwargs)
    return save_checkpoint(tmp_path / "teacher.pt", checkpoint_payload(model, recipe.arch, recipe.arch_kwargs,
                                                                       tiny_mnist, recipe.to_dict()))


# ---------------------------------------------------------------- 1. --device


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:", "gpu", "CPU"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_unknown_device_is_one_line_error_before_any_work(tmp_path, stand_ins, device, command):
    args = (["train", "--recipe", "hinton-teacher", "--out", str(tmp_path / "x.pt")] if command == "train"
            else ["evaluate", str(tmp_path / "none.pt")])
    result = run(*args, "--device", device)
    assert_one_line_error(result, f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    assert stand_ins == []


def test_cuda_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(Exception, match="torch sees 1 CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Exception, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device("auto")


# ---------------------------------------------------------------- 2. --seed


@pytest.mark.parametrize("seed", [str(2**70), str(2**63), "-1"])
def test_seed_out_of_range_is_a_usage_error_before_loading_data(tmp_path, stand_ins, seed):
    result = run("train", "--recipe", "hinton-teacher", "--out", str(tmp_path / "x.pt"), "--seed", seed)
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output
    assert stand_ins == []


# ---------------------------------------------------------------- 3. distill with a hard-label recipe


def test_distill_refuses_a_recipe_without_teacher(tmp_path, stand_ins, tiny_mnist):
    teacher = _teacher(tmp_path, tiny_mnist)
    result = run("distill", "--teacher", str(teacher), "--recipe", "hinton-student-hard", "--out",
                 str(tmp_path / "s.pt"))
    assert_one_line_error(result, "recipe hinton-student-hard trains on hard labels")
    assert "kdverify train --recipe hinton-student-hard" in result.output
    assert stand_ins == [] and not (tmp_path / "s.pt").exists()


# ---------------------------------------------------------------- 4. --out checked before training


def test_unwritable_output_folder_fails_before_training(tmp_path, stand_ins, monkeypatch):
    def refuse(final):  # as root, chmod cannot make a folder unwritable
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(final))

    monkeypatch.setattr(io_module, "temp_beside", refuse)
    result = run("train", "--recipe", "hinton-teacher", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, f"cannot write to {tmp_path}: Permission denied")
    assert stand_ins == []


@pytest.mark.parametrize("case", ["exists", "directory", "missing folder"])
def test_bad_output_fails_before_training(tmp_path, stand_ins, tiny_mnist, case):
    out = {"exists": tmp_path / "x.pt", "directory": tmp_path / "d.pt", "missing folder": tmp_path / "no" / "x.pt"}
    out["exists"].write_bytes(b"keep me")
    out["directory"].mkdir()
    teacher = _teacher(tmp_path, tiny_mnist)
    for args in (["train", "--recipe", "hinton-teacher"],
                 ["distill", "--teacher", str(teacher), "--recipe", "hinton-student-kd"]):
        result = run(*args, "--out", str(out[case]))
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        assert stand_ins == []
    assert out["exists"].read_bytes() == b"keep me"


def test_train_writes_the_checkpoint(tmp_path, stand_ins):
    result = run("train", "--recipe", "hinton-student-hard", "--out", str(tmp_path / "x.pt"), "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert stand_ins == ["load", "fit"] and "wrote " in result.output
    assert load_checkpoint(tmp_path / "x.pt").recipe["epochs"] == 1


def _fail_writes(monkeypatch, failures: int) -> None:
    real = checkpoint_module.atomic_write_bytes
    left = [failures]

    def flaky(path, payload):
        if left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, payload)

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", flaky)


def test_failed_save_after_training_keeps_the_model(tmp_path, stand_ins, monkeypatch):
    _fail_writes(monkeypatch, 1)
    out = tmp_path / "x.pt"
    result = run("train", "--recipe", "hinton-student-hard", "--out", str(out))
    assert_one_line_error(result, f"cannot write {out}: No space left on device; the trained model was kept at ")
    assert stand_ins == ["load", "fit"] and not out.exists()
    (rescued,) = (tmp_path / "cache" / "rescued").glob("hinton-student-hard-*.pt")
    assert str(rescued) in result.output
    assert load_checkpoint(rescued).recipe["name"] == "hinton-student-hard"


def test_failed_rescue_says_so(tmp_path, stand_ins, monkeypatch):
    _fail_writes(monkeypatch, 2)
    result = run("train", "--recipe", "hinton-student-hard", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, "No space left on device; keeping the model at ")
    assert "failed too" in result.output


# ---------------------------------------------------------------- 5. evaluate


def _checkpoint(tmp_path: Path, dataset, nan_weights: bool = False) -> Path:
    recipe = get_recipe("hinton-student-hard")
    torch.manual_seed(0)
    model = build_model(recipe.arch, **recipe.arch_kwargs)
    if nan_weights:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
    return save_checkpoint(tmp_path / "m.pt", checkpoint_payload(model, recipe.arch, recipe.arch_kwargs, dataset,
                                                                 recipe.to_dict()))


def test_evaluate_prints_the_confusion_matrix(tmp_path, stand_ins, tiny_mnist):
    result = run("evaluate", str(_checkpoint(tmp_path, tiny_mnist)))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    lines = result.output.splitlines()
    per_class = [int(x.split(":")[1]) for x in lines[1].removeprefix("per class: ").split()]
    start = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    header, rows = lines[start + 1], lines[start + 2:start + 12]
    assert header.split() == [str(i) for i in range(10)]
    matrix = [[int(v) for v in row.split()[1:]] for row in rows]
    assert [row.split()[0] for row in rows] == [str(i) for i in range(10)]
    assert sum(map(sum, matrix)) == len(tiny_mnist.test)
    assert per_class == [sum(row) - row[i] for i, row in enumerate(matrix)]
    assert len({len(row) for row in rows} | {len(header)}) == 1, "columns are aligned"


def test_confusion_rows_name_cifar_classes():
    from kdverify.cli import confusion_lines
    from kdverify.data import CIFAR_CLASSES

    lines = confusion_lines(torch.eye(10, dtype=torch.int64) * 1000, CIFAR_CLASSES)
    assert lines[2].startswith("1 automobile") and lines[2].split()[3] == "1000"
    assert len({len(line) for line in lines}) == 1


def test_evaluate_warns_about_zero_std_and_nan_weights(tmp_path, stand_ins, tiny_mnist):
    import dataclasses

    broken = dataclasses.replace(tiny_mnist, std=(0.0,))
    result = run("evaluate", str(_checkpoint(tmp_path, broken, nan_weights=True)))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("kdverify: warning: ")]
    assert len(warnings) == 2, result.output
    assert "normalisation std [0.0] contains zero or non-finite values" in warnings[0]
    assert "1 weight tensor(s) contain NaN or inf" in warnings[1]
    assert "confusion matrix" in result.output


# ---------------------------------------------------------------- 6. recipes


@pytest.mark.parametrize("budget", BUDGETS)
def test_recipes_shows_what_the_budget_runs(budget):
    result = run("recipes", "--budget", budget)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header[:13] == ["name", "dataset", "arch", "objective", "epochs", "batch", "optimizer", "lr", "schedule",
                           "T", "alpha", "augment", "teacher"] and header[-1] == "note"
    for line in lines[1:]:
        cells = line.split()
        r = get_recipe(cells[0], budget)
        assert int(cells[4]) == r.epochs and int(cells[5]) == r.batch_size and float(cells[7]) == r.lr
        assert cells[6].startswith(r.optimizer) and cells[8] == r.schedule and cells[11] == r.augment
        assert cells[9] == (f"{r.temperature:g}" if r.objective == "kd" else "-")
        assert cells[10] == (f"{r.soft_weight:g}" if r.objective != "ce" else "-")
        assert cells[12] == (r.teacher or "-")
    assert len(lines) == 1 + len(RECIPES)
    inherited = next(line for line in lines if line.startswith("tutorial-lightnn "))
    assert ("original recipe: student alone" in inherited) == (budget != "original")


# ---------------------------------------------------------------- 7. --deterministic


@pytest.mark.parametrize("flag", [True, False])
def test_deterministic_is_set_before_anything_is_built(tmp_path, stand_ins, monkeypatch, tiny_mnist, flag):
    monkeypatch.setattr(determinism, "set_deterministic", lambda: stand_ins.append("deterministic"))
    extra = ["--deterministic"] if flag else []
    result = run("train", "--recipe", "hinton-student-hard", "--out", str(tmp_path / "x.pt"), *extra)
    assert result.exit_code == 0, result.output
    result = run("evaluate", str(tmp_path / "x.pt"), *extra)
    assert result.exit_code == 0, result.output
    assert stand_ins == (["deterministic", "load", "fit", "deterministic", "load"] if flag else ["load", "fit", "load"])


@pytest.fixture
def torch_modes_restored(monkeypatch):
    """--deterministic changes process-wide torch state: put threads, kernels and cuDNN flags back after."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


@pytest.mark.parametrize("command", ["train", "distill"])
def test_deterministic_trains_on_one_thread_with_deterministic_kernels_and_the_checkpoint_says_so(
        tmp_path, stand_ins, tiny_mnist, monkeypatch, torch_modes_restored, command):
    """What the option's help promises (1 thread, deterministic kernels), seen from inside the training, and
    recorded in the checkpoint's settings; without it, neither is forced."""
    seen = []
    stand_in_fit = train_module.fit

    def fit(recipe, dataset, teacher=None, progress=None):
        seen.append((torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))
        return stand_in_fit(recipe, dataset, teacher, progress)

    monkeypatch.setattr(train_module, "fit", fit)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    args = (["train", "--recipe", "hinton-teacher"] if command == "train"
            else ["distill", "--teacher", str(_teacher(tmp_path, tiny_mnist)), "--recipe", "hinton-student-kd"])
    assert run(*args, "--out", str(tmp_path / "plain.pt")).exit_code == 0
    result = run(*args, "--out", str(tmp_path / "det.pt"), "--deterministic")
    assert result.exit_code == 0, result.output
    assert seen == [(2, False), (1, True)]
    settings = {name: load_checkpoint(tmp_path / f"{name}.pt").metrics["settings"] for name in ("plain", "det")}
    assert (settings["det"]["threads"], settings["det"]["deterministic"]) == (1, True)
    assert (settings["plain"]["threads"], settings["plain"]["deterministic"]) == (2, False)


# ---------------------------------------------------------------- 8. SIGTERM and Ctrl-C

_SLOW_TRAIN = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    import kdverify.data
    from kdverify.io import temp_beside

    # what a terminal gives: a background parent (CI, nohup) hands its children SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow_load(name, root=None, device="cpu"):
        with temp_beside(Path(sys.argv[1])):
            print("ready", flush=True)
            time.sleep(30)

    kdverify.data.load_dataset = slow_load
    from kdverify.cli import main
    main(["train", "--recipe", "hinton-teacher", "--out", sys.argv[1]], prog_name="kdverify")
""")


@pytest.mark.processes
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_removes_temporaries_and_says_so(tmp_path, signum, code):
    out = tmp_path / "out" / "x.pt"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_TRAIN, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert len(list(out.parent.iterdir())) == 1, "the stand-in holds a temporary"
        started = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "kdverify: interrupted; nothing was written" in stderr and "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []
    assert time.monotonic() - started < 20  # promptly, not after the 30 s the stand-in works (slack for a busy CPU)


def test_sigterm_handler_is_restored_after_the_command():
    before = signal.getsignal(signal.SIGTERM)
    assert run("recipes").exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- 9. --import


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A folder of user modules as the current directory; sys.path, sys.modules and RECIPES restored after."""

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    yield write
    for name in set(sys.modules) - before:
        if name.startswith("kdv_user_"):
            del sys.modules[name]


_REGISTER = """
    from kdverify.train.recipes import Recipe, register_recipe
    register_recipe(Recipe("{name}", "mnist", "hinton_mlp", epochs=1, lr=0.1))
"""


def test_import_registers_a_users_recipes(user_modules):
    mod = user_modules("kdv_user_a", _REGISTER.format(name="user-recipe-a"))
    result = run("--import", mod, "recipes")
    assert result.exit_code == 0, result.output
    assert "user-recipe-a" in result.output


def test_import_env_var_is_comma_separated(user_modules):
    a = user_modules("kdv_user_b", _REGISTER.format(name="user-recipe-b"))
    c = user_modules("kdv_user_c", _REGISTER.format(name="user-recipe-c"))
    result = run("recipes", env={"KDVERIFY_IMPORT": f" {a} ,{c},"})
    assert result.exit_code == 0, result.output
    assert "user-recipe-b" in result.output and "user-recipe-c" in result.output


def test_import_failures_are_one_line(user_modules):
    assert_one_line_error(run("--import", "kdv_user_missing", "recipes"),
                          "cannot import module 'kdv_user_missing' (--import / $KDVERIFY_IMPORT): No module named")
    user_modules("kdv_user_needs", "import kdv_user_not_there\n")
    assert_one_line_error(run("--import", "kdv_user_needs", "recipes"),
                          "cannot import module 'kdv_user_needs'")
    user_modules("kdv_user_boom", "x = 1\nraise RuntimeError('boom')\n")
    result = run("recipes", env={"KDVERIFY_IMPORT": "kdv_user_boom"})
    assert_one_line_error(result, "importing module 'kdv_user_boom' (--import / $KDVERIFY_IMPORT) failed at ")
    assert "kdv_user_boom.py:2: RuntimeError: boom" in result.output
    user_modules("kdv_user_syntax", "def (:\n")
    assert_one_line_error(run("--import", "kdv_user_syntax", "recipes"), "SyntaxError")


@pytest.mark.processes
def test_nothing_in_the_working_directory_runs_unless_named(user_modules, tmp_path):
    """A stray ./onnx.py or ./tomllib.py is never imported in place of the library; the directory joins
    sys.path only for a named --import, and last."""
    import subprocess

    marker = tmp_path / "ran"
    for shadow in ("onnx", "tomllib", "numpy"):
        user_modules(shadow, f"open({str(marker)!r}, 'a').write('{shadow} ')\n")
    (tmp_path / "r.toml").write_text('[my-r]\ndataset = "mnist"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\n')
    user = user_modules("kdv_user_ok", "X = 1\n")
    # without --import (torch imports numpy; export would import onnx), and with it, where the directory is on sys.path
    for args in (["export", "missing.pt"], ["--import", user, "recipes", "--recipe-file", "r.toml"]):
        # the installed console script, as a user runs it (`python -c` would put '' first on sys.path itself)
        done = subprocess.run([str(Path(sys.executable).parent / "kdverify"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in done.stderr, done.stderr
        assert not marker.exists(), f"{args}: ran {marker.read_text()}"
    result = run("--import", user, "recipes")
    assert result.exit_code == 0 and sys.path[-1] == str(tmp_path) and str(tmp_path) not in sys.path[:-1]


def test_distill_refuses_a_teacher_of_other_data_before_loading_any(tmp_path, stand_ins, tiny_mnist, monkeypatch):
    """A teacher checkpoint names its dataset: a teacher of other data is a one-line error before data or writes."""
    recipe = get_recipe("hinton-teacher")
    model = build_model(recipe.arch, **recipe.arch_kwargs)
    other = tiny_mnist.__class__(**{**vars(tiny_mnist), "name": "digits59"})
    teacher = save_checkpoint(tmp_path / "t.pt", checkpoint_payload(model, recipe.arch, recipe.arch_kwargs, other,
                                                                    recipe.to_dict()))
    result = run("distill", "--teacher", str(teacher), "--recipe", "hinton-student-kd", "--out", str(tmp_path / "s.pt"))
    assert_one_line_error(result, "t.pt was trained on 'digits59'; recipe hinton-student-kd distils on 'mnist'")
    assert stand_ins == [] and not (tmp_path / "s.pt").exists()


def test_distill_refuses_a_teacher_with_other_classes_before_training(tmp_path, stand_ins, tiny_mnist):
    recipe = get_recipe("hinton-teacher")
    model = build_model(recipe.arch, **{**recipe.arch_kwargs, "num_classes": 2})
    two = tiny_mnist.__class__(**{**vars(tiny_mnist), "classes": ("a", "b")})
    teacher = save_checkpoint(tmp_path / "t.pt", checkpoint_payload(model, recipe.arch, {**recipe.arch_kwargs,
                                                                                         "num_classes": 2},
                                                                    two, recipe.to_dict()))
    result = run("distill", "--teacher", str(teacher), "--recipe", "hinton-student-kd", "--out", str(tmp_path / "s.pt"))
    assert_one_line_error(result, "t.pt has 2 classes and inputs (1, 28, 28); 'mnist' (synthetic) has 10 classes")
    assert stand_ins == ["load"] and not (tmp_path / "s.pt").exists()


def test_distill_never_writes_over_its_teacher(tmp_path, stand_ins, tiny_mnist):
    teacher = _teacher(tmp_path, tiny_mnist)
    before = teacher.read_bytes()
    result = run("distill", "--teacher", str(teacher), "--recipe", "hinton-student-kd", "--out", str(teacher),
                 "--force")
    assert_one_line_error(result, "is the teacher checkpoint itself")
    assert stand_ins == [] and teacher.read_bytes() == before


@pytest.mark.parametrize("atol", ["nan", "inf", "-1", "2"])
def test_export_atol_must_be_a_finite_tolerance(tmp_path, atol):
    result = run("export", str(tmp_path / "m.pt"), "--atol", atol)
    assert result.exit_code == 2 and "--atol" in result.output and "Traceback" not in result.output


def test_force_never_replaces_a_device_node(tmp_path, stand_ins):
    from kdverify.errors import KdverifyError
    from kdverify.io import check_writable

    with pytest.raises(KdverifyError, match="/dev/null is not a regular file"):
        check_writable("/dev/null", force=True)
    result = run("train", "--recipe", "hinton-student-hard", "--out", "/dev/null", "--force")
    assert_one_line_error(result, "/dev/null is not a regular file")
    assert stand_ins == []


def test_absurd_epochs_are_usage_errors_and_long_etas_count_days():
    from kdverify.train.loop import duration_text

    result = run("train", "--recipe", "hinton-student-hard", "--out", "x.pt", "--epochs", str(10**30))
    assert result.exit_code == 2 and "--epochs" in result.output and "Traceback" not in result.output
    assert duration_text(266) == "00:04:26" and duration_text(3 * 86400 + 3723) == "3d 01:02:03"
