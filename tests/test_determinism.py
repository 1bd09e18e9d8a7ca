"""Determinism mode: pytest and the CLI, two different processes, train bit-identical weights."""

import os
import subprocess
import sys

import pytest

from kdverify.cache.checkpoint import load_checkpoint

pytestmark = pytest.mark.processes

USER_TEST = '''
import pytest

@pytest.mark.claims
def test_weights(kd_trained, tmp_path_factory):
    import torch
    trained = kd_trained("tiny-kd-1")
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert trained.settings["deterministic"] is True and trained.settings["threads"] == 1
    open("weights.txt", "w").write(trained.weights)
'''


def test_pytest_and_the_cli_train_bit_identical_weights_in_deterministic_mode(tiny_pytester, tmp_path, monkeypatch):
    pytester = tiny_pytester
    monkeypatch.delenv("KDVERIFY_DATA", raising=False)
    monkeypatch.setenv("KDVERIFY_CACHE", str(tmp_path / "user-cache"))
    pytester.makepyfile(test_user=USER_TEST)
    # pytest in this process (whatever earlier tests left in it), the CLI in fresh ones
    result = pytester.runpytest("--kd-import", "tiny_project", "--kd-deterministic",
                                "--kd-cache", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    from_pytest = (pytester.path / "weights.txt").read_text()

    env = {**os.environ, "PYTHONPATH": str(pytester.path)}
    teacher, student = tmp_path / "teacher.pt", tmp_path / "student.pt"
    cli = [sys.executable, "-m", "kdverify.cli", "--import", "tiny_project"]
    for args in (["train", "--recipe", "tiny-teacher", "--out", str(teacher)],
                 ["distill", "--teacher", str(teacher), "--recipe", "tiny-kd-1", "--out", str(student)]):
        done = subprocess.run([*cli, *args, "--deterministic"], env=env, capture_output=True, text=True,
                              cwd=pytester.path)
        assert done.returncode == 0, done.stderr
    ckpt = load_checkpoint(student)
    assert ckpt.weights_sha256 == from_pytest
    assert ckpt.metrics["settings"]["deterministic"] is True and ckpt.metrics["settings"]["threads"] == 1
