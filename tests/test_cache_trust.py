"""A cache entry's stored metrics are not what a verdict believes: its numbers come from its verified weights."""

import importlib
from pathlib import Path

import pytest
import torch

from kdverify.cache.spec import resolve
from kdverify.cache.store import ModelCache
from kdverify.data import load_dataset
from kdverify.train.recipes import get_recipe


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    """The tiny dataset and recipes, registered for one test (conftest's registries_restored removes them)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import tiny_project

    importlib.reload(tiny_project)


def test_an_edited_confusion_matrix_in_a_cache_entry_changes_no_number(tmp_path):
    datasets = {"tiny": load_dataset("tiny")}
    recipe = resolve("tiny-hard", "paper")
    trained = ModelCache(tmp_path, datasets, "paper", progress=None).get(recipe)
    (entry,) = tmp_path.glob("tiny-hard-*.pt")
    sealed = torch.load(entry, weights_only=True)
    for old_format in (False, True):
        payload = {k: v for k, v in sealed.items()}
        payload["metrics"] = {**sealed["metrics"], "test": {**sealed["metrics"]["test"], "confusion": torch.eye(
            10, dtype=torch.long).mul(20).tolist()}}  # "0 errors"
        if old_format:  # a format-2 entry: no seal over its metrics, only its weights' digest
            payload.pop("payload_sha256")
            payload["format_version"] = 2
        torch.save(payload, entry)
        again = ModelCache(tmp_path, datasets, "paper", progress=None).get(recipe)
        # sealed: the edit breaks the seal and the entry is retrained; unsealed: loaded, and measured again
        assert again.source == ("cache" if old_format else "trained")
        assert again.evaluation.errors == trained.evaluation.errors  # never the stored "0 errors"
        assert torch.equal(again.evaluation.confusion, trained.evaluation.confusion)


def test_a_student_recipe_whose_teacher_learns_other_data_is_refused_before_training(monkeypatch):
    import dataclasses

    from kdverify.errors import KdverifyError
    from kdverify.train.recipes import register_recipe

    kd = get_recipe("tiny-kd-0", "paper")
    register_recipe(dataclasses.replace(kd, name="tiny-kd-mnist-teacher", teacher="hinton-teacher"))
    cache = ModelCache(None, {"tiny": load_dataset("tiny")}, "paper", progress=None)
    with pytest.raises(KdverifyError, match="distils on 'tiny' from hinton-teacher, which trains on 'mnist'"):
        cache.get(resolve("tiny-kd-mnist-teacher", "paper"))


def test_a_cache_that_cannot_be_written_keeps_the_trained_model_for_the_session(tmp_path, monkeypatch):
    from kdverify.cache import store as cache_module
    from kdverify.errors import CheckpointError

    def disk_full(path, payload, force=False):
        raise CheckpointError(f"cannot write {path}: No space left on device")

    said = []
    monkeypatch.setattr(cache_module, "save_checkpoint", disk_full)
    cache = ModelCache(tmp_path, {"tiny": load_dataset("tiny")}, "paper", progress=None, say=said.append)
    trained = cache.get(resolve("tiny-hard", "paper"))
    assert trained.source == "trained" and trained.model is not None and trained.evaluation.total == 200
    assert "No space left on device" in said[0] and "used from memory this session" in said[0]
    assert not list(tmp_path.glob("*.pt"))


def test_a_student_that_cannot_join_its_teacher_fails_before_the_teacher_trains(monkeypatch):
    import dataclasses

    from kdverify.errors import KdverifyError
    from kdverify.train.recipes import register_recipe

    register_recipe(dataclasses.replace(get_recipe("tiny-kd-0", "paper"), name="tiny-hint", objective="hint",
                                        arch="light_nn", arch_kwargs={}))
    trained = []
    cache = ModelCache(None, {"tiny": load_dataset("tiny")}, "paper", progress=lambda *a: trained.append(a))
    with pytest.raises(KdverifyError, match="recipe 'tiny-hint': objective 'hint' cannot join student light_nn to "
                                            "teacher hinton_mlp on inputs \\(1, 28, 28\\)"):
        cache.get(resolve("tiny-hint", "paper"))
    assert trained == []  # not even the teacher
