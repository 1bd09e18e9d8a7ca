"""The README's cache promises ("Many processes, many machines"), on tiny_project's recipes:

- the cache key holds what changes a model's bits besides its recipe (CPU kernels or GPU, torch version,
  determinism mode), and the recipe, the data and the trainer: change any and it is another entry, never
  this machine's model passed off; the thread count is recorded, not keyed;
- `kdverify cache-add` adopts a user's own teacher and student trained elsewhere (a student only with the
  teacher it learnt from), the cache then trains nothing, and the model says the machine it was trained on.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from kdverify.cache import store as cache_module
from kdverify.cache.checkpoint import load_checkpoint
from kdverify.cache.spec import resolve
from kdverify.cache.store import ModelCache, NotCached
from kdverify.cli import main
from kdverify.data import load_dataset
from kdverify.train.recipes import get_recipe, register_recipe


@pytest.fixture
def torch_modes_restored(monkeypatch):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _served_from_cache(root, datasets, name="tiny-hard") -> bool:
    """Whether a fresh process's cache (nothing in memory) finds an entry for the recipe, training nothing."""
    cache = ModelCache(root, datasets, "paper", progress=None)
    cache.train_missing = False
    try:
        return cache.get(resolve(name, "paper")).source == "cache"
    except NotCached:
        return False


def test_what_keys_a_cache_entry_apart(tmp_path, monkeypatch, tiny_registered, torch_modes_restored):
    datasets = {"tiny": load_dataset("tiny")}
    trained = ModelCache(tmp_path, datasets, "paper", progress=None).get(resolve("tiny-hard", "paper"))
    assert trained.source == "trained" and _served_from_cache(tmp_path, datasets)

    torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)  # recorded in the entry, not part of its key
    assert _served_from_cache(tmp_path, datasets)
    other_note = dataclasses.replace(get_recipe("tiny-hard", "paper"), note="words change no bits")
    register_recipe(other_note, replace=True)
    assert _served_from_cache(tmp_path, datasets)

    kernels = torch.backends.cpu.get_cpu_capability()
    apart = {
        "CPU kernels": lambda: monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability",
                                                   lambda: "AVX512" if kernels != "AVX512" else "AVX2"),
        "torch version": lambda: monkeypatch.setattr(torch, "__version__", "99.0.0+other"),
        "determinism mode": lambda: torch.use_deterministic_algorithms(True),
        "trainer version": lambda: monkeypatch.setattr(cache_module, "TRAINER_VERSION", "999"),
        "recipe": lambda: register_recipe(dataclasses.replace(other_note, lr=0.04), replace=True),
        "data": lambda: datasets.update(tiny=dataclasses.replace(datasets["tiny"], checksum="another-copy")),
    }
    for what, change in apart.items():
        original = datasets["tiny"]
        change()
        assert not _served_from_cache(tmp_path, datasets), f"{what} changed, but the old entry was served"
        monkeypatch.undo()
        torch.use_deterministic_algorithms(False)
        register_recipe(other_note, replace=True)
        datasets["tiny"] = original
        assert _served_from_cache(tmp_path, datasets), f"after undoing the {what} change"

    # a model trained under other settings is a second entry beside this machine's, which is still served
    monkeypatch.setattr(torch, "__version__", "99.0.0+other")
    ModelCache(tmp_path, datasets, "paper", progress=None).get(resolve("tiny-hard", "paper"))
    monkeypatch.undo()
    assert len(list(tmp_path.glob("tiny-hard-seed1-*.pt"))) == 2
    again = ModelCache(tmp_path, datasets, "paper", progress=None).get(resolve("tiny-hard", "paper"))
    assert again.source == "cache" and again.weights == trained.weights


def _ok(result) -> str:
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.output


def _refused(result, message: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("kdverify: error: ") and message in result.output, result.output


def test_cache_add_adopts_a_users_teacher_and_student_and_the_cache_then_trains_nothing(tmp_path, monkeypatch,
                                                                                         tiny_registered):
    def run(*args):
        return CliRunner().invoke(main, [*map(str, args)])

    monkeypatch.setattr(cache_module, "machine_description", lambda device="cpu": "the other box (AVX512)")
    cache, paper = tmp_path / "cache", ("--budget", "paper")
    teacher, student = tmp_path / "teacher.pt", tmp_path / "student.pt"
    other_teacher, others_student = tmp_path / "teacher-seed5.pt", tmp_path / "student-of-seed5.pt"
    _ok(run("train", "--recipe", "tiny-teacher", *paper, "--out", teacher))
    _ok(run("distill", "--teacher", teacher, "--recipe", "tiny-kd-0", *paper, "--out", student))
    _ok(run("train", "--recipe", "tiny-teacher", *paper, "--seed", "5", "--out", other_teacher))
    _ok(run("distill", "--teacher", other_teacher, "--recipe", "tiny-kd-0", *paper, "--out", others_student))
    _ok(run("train", "--recipe", "tiny-teacher", *paper, "--epochs", "1", "--out", tmp_path / "short.pt"))

    _refused(run("cache-add", student, *paper, "--cache", cache),
             "its teacher tiny-teacher is not in the cache; cache-add the teacher first")
    _refused(run("cache-add", tmp_path / "short.pt", *paper, "--cache", cache),
             "but tiny-teacher in the paper budget is")  # not the recipe the claims would train
    assert not cache.exists() or not list(cache.glob("*.pt"))  # nothing adopted by a refusal
    assert "cached as " in _ok(run("cache-add", teacher, *paper, "--cache", cache))
    _refused(run("cache-add", others_student, *paper, "--cache", cache),
             "it was not distilled from the cached tiny-teacher")
    assert "cached as " in _ok(run("cache-add", student, *paper, "--cache", cache))
    assert sorted(p.name.split("-seed")[0] for p in cache.glob("*.pt")) == ["tiny-kd-0", "tiny-teacher"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cache trained a model it was given")

    monkeypatch.setattr(cache_module, "fit", no_training)
    monkeypatch.setattr(cache_module, "machine_description", lambda device="cpu": "this box")
    got = ModelCache(cache, {"tiny": load_dataset("tiny")}, "paper", progress=None).get(resolve("tiny-kd-0", "paper"))
    assert got.source == "cache" and got.weights == load_checkpoint(student).metrics["weights_sha256"]
    assert got.machine == "the other box (AVX512)"  # what a report names: where it was trained, not this machine
