"""The benchmarks' --bench-teacher / --bench-student options, run through pytester on two tiny checkpoints.

The tiny pair takes 2x6x6 inputs and predicts 4 classes, so any shape or class count taken from a
constant (1x28x28, 10) instead of the checkpoints fails here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdverify import data as kd_data
from kdverify.cache.checkpoint import checkpoint_payload, save_checkpoint
from kdverify.data import Dataset
from kdverify.train.models import build_model

INFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "test_inference.py"
SHAPE, CLASSES = (2, 6, 6), 4
PAIR = "tiny-teacher-vs-tiny-student"


def tiny_dataset(name: str = "tiny4", shape: tuple[int, ...] = SHAPE, classes: int = CLASSES) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, *shape), generator=gen, dtype=torch.uint8)
    labels = torch.arange(40) % classes
    return Dataset.from_tensors(name, images[:32], labels[:32], images[32:], labels[32:])


def save_tiny(path: Path, name: str, hidden: int, data: Dataset, metrics: dict | None = None) -> str:
    kwargs = {"hidden": hidden, "in_features": math.prod(data.input_shape), "num_classes": len(data.classes)}
    torch.manual_seed(0)
    model = build_model("hinton_mlp", **kwargs)
    save_checkpoint(path, checkpoint_payload(model, "hinton_mlp", kwargs, data, recipe={"name": name},
                                             metrics=metrics))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def exporter_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Export and quantise once out here: pytester's in-process runs unload the modules they import, and torch
    refuses to import some of the exporter's twice (its operator libraries register once per process)."""
    from kdverify.export.onnx import export_model
    from kdverify.export.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("warm-export")
    export_model(build_model("hinton_mlp", hidden=4, in_features=4, num_classes=2).eval(), (1, 2, 2),
                 folder / "m.onnx")
    quantize_int8(folder / "m.onnx", folder / "m.int8.onnx")


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Teacher (test errors recorded) and student (none recorded: measured on its registered dataset)."""
    for env in ("KDVERIFY_BENCH_TEACHER", "KDVERIFY_BENCH_STUDENT"):
        monkeypatch.delenv(env, raising=False)
    data = tiny_dataset()
    kd_data.register_dataset("tiny4", lambda root: data)  # the in-process run sees it (removed after the test)
    return {
        "teacher": save_tiny(tmp_path / "t.pt", "tiny-teacher", 12, data, {"test": {"errors": 3, "total": 8}}),
        "student": save_tiny(tmp_path / "s.pt", "tiny-student", 5, data),
        "other-shape": save_tiny(tmp_path / "shape.pt", "tiny-3x6x6", 5, tiny_dataset(shape=(3, 6, 6))),
        "other-classes": save_tiny(tmp_path / "classes.pt", "tiny-5", 5, tiny_dataset(classes=5)),
    }


@pytest.fixture(autouse=True)
def not_an_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner pytest runs in this process: under `pytest -n`, pytest-benchmark would read this worker's
    PYTEST_XDIST_WORKER and disable benchmarking (refusing --benchmark-only)."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(str(INFERENCE), "-p", "no:cacheprovider", *args)


def test_user_pair_replaces_the_built_in_pairs(pytester: pytest.Pytester, pair: dict[str, str]) -> None:
    result = run(pytester, "--benchmark-disable", "-v", "--bench-teacher", pair["teacher"],
                 "--bench-student", pair["student"])
    result.assert_outcomes(passed=12)  # 2 models x 3 runtimes x 2 batch sizes, no built-in pair
    result.stdout.fnmatch_lines([f"*test_inference[[]{PAIR}-teacher-torch-eager-b1] PASSED*",
                                 f"*test_inference[[]{PAIR}-student-ort-int8-b256] PASSED*"])
    result.stdout.no_fnmatch_line("*mnist-mlp*")


def test_summary_labels_and_test_errors_come_from_the_checkpoints(pytester: pytest.Pytester,
                                                                   pair: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDVERIFY_BENCH_TEACHER", pair["teacher"])  # the environment variables work too
    monkeypatch.setenv("KDVERIFY_BENCH_STUDENT", pair["student"])
    result = run(pytester, "--benchmark-only", "--bench-rounds-scale", "0.01", "-k", "eager or fp32")
    result.assert_outcomes(passed=8, deselected=4)
    result.stdout.fnmatch_lines([
        "*kdverify benchmarks summary*",
        f"{PAIR}*tiny-teacher*torch-eager*1*3/8",
        f"{PAIR}*tiny-student*ort-fp32*256*",
        "*teacher tiny-teacher*trained: *t.pt*test errors: 3/8 recorded in the checkpoint (tiny4)",
        "*student tiny-student*trained: *s.pt*test errors: */8 measured here on the tiny4 test split*",
        f"*[[]{PAIR}]*",
    ])


@pytest.mark.parametrize("args,message", [
    (["--bench-teacher", "{teacher}"], "--bench-teacher needs --bench-student*too*"),
    (["--bench-student", "{student}"], "--bench-student needs --bench-teacher*too*"),
    (["--bench-teacher", "{teacher}", "--bench-student", "{missing}"], "--bench-student: *missing.pt: no such file"),
    (["--bench-teacher", "{teacher}", "--bench-student", "{other-shape}"],
     "teacher *t.pt has input shape (2, 6, 6) but student *shape.pt has (3, 6, 6): *"),
    (["--bench-teacher", "{teacher}", "--bench-student", "{other-classes}"],
     "teacher *t.pt has class count 4 but student *classes.pt has 5: *"),
], ids=["teacher-only", "student-only", "missing", "shapes", "classes"])
def test_usage_errors_are_one_line(pytester: pytest.Pytester, pair: dict[str, str], tmp_path: Path,
                                   args: list[str], message: str) -> None:
    paths = {**pair, "missing": str(tmp_path / "missing.pt")}
    result = run(pytester, "--collect-only", *[a.format(**paths) for a in args])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_one_option_from_the_environment_still_needs_the_other(pytester: pytest.Pytester, pair: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDVERIFY_BENCH_STUDENT", pair["student"])
    result = run(pytester, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: $KDVERIFY_BENCH_STUDENT needs --bench-teacher (or $KDVERIFY_BENCH_TEACHER) "
                                 "too*"])


def test_without_options_the_built_in_pairs_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("KDVERIFY_BENCH_TEACHER", "KDVERIFY_BENCH_STUDENT"):
        monkeypatch.delenv(env, raising=False)
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*[[]mnist-mlp-teacher-torch-eager-b1]", "*[[]cifar-cnn-student-ort-int8-b256]",
                                 "24 tests collected*"])


def test_built_in_pair_without_a_cache_uses_the_pinned_teacher_to_describe_the_student(tmp_path: Path) -> None:
    from benchmarks._pairs import load_built_in
    from kdverify.cache.manifest import read_manifest

    pinned = read_manifest()["hinton-teacher"]
    teacher, student = load_built_in("mnist-mlp", tmp_path / "empty-cache")
    assert teacher.trained and f"kdverify/teachers/{pinned['file']}" in teacher.weights
    assert (teacher.test_errors, teacher.test_total) == (pinned["test_errors"], pinned["test_total"])
    assert teacher.dataset == "mnist"
    assert not student.trained and student.weights.startswith("fresh init, seed 0 (no hinton-student-kd-seed*")
    assert (student.input_shape, student.num_classes, student.mean) == ((1, 28, 28), 10, teacher.mean)
    assert student.label == "hinton-student-kd" and student.params == 1_276_810


def test_a_users_pair_skips_the_training_benchmark_and_its_targets(pytester: pytest.Pytester,
                                                                   pair: dict[str, str]) -> None:
    train = INFERENCE.with_name("test_train_throughput.py")
    result = pytester.runpytest(str(train), "-p", "no:cacheprovider", "-rs", "--benchmark-only",
                                "--bench-teacher", pair["teacher"], "--bench-student", pair["student"])
    assert result.ret == pytest.ExitCode.OK and result.parseoutcomes().get("passed", 0) == 0
    result.stdout.fnmatch_lines(["*times kdverify's own training loop on synthetic MNIST, not your pair*"])
    result.stdout.no_fnmatch_line("*NOT MET*")
