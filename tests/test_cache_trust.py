"""A cache entry's stored metrics are not what a verdict believes: its numbers come from its verified weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_project  # noqa: E402,F401  (registers the tiny dataset and recipes)

from kdverify.cache import ModelCache  # noqa: E402
from kdverify.data import load_dataset  # noqa: E402
from kdverify.recipes import get_recipe  # noqa: E402


def test_an_edited_confusion_matrix_in_a_cache_entry_changes_no_number(tmp_path):
    datasets = {"tiny": load_dataset("tiny")}
    recipe = get_recipe("tiny-hard", "paper")
    trained = ModelCache(tmp_path, datasets, "paper", progress=None).get(recipe)
    (entry,) = tmp_path.glob("tiny-hard-*.pt")
    payload = torch.load(entry, weights_only=True)
    payload["metrics"]["test"]["confusion"] = torch.eye(10, dtype=torch.long).mul(20).tolist()  # "0 errors"
    torch.save(payload, entry)
    again = ModelCache(tmp_path, datasets, "paper", progress=None).get(recipe)
    assert again.source == "cache"  # the weights still verify: the entry is used ...
    assert again.evaluation.errors == trained.evaluation.errors  # ... and measured again, not believed
    assert torch.equal(again.evaluation.confusion, trained.evaluation.confusion)


def test_a_student_recipe_whose_teacher_learns_other_data_is_refused_before_training(monkeypatch):
    import dataclasses

    import pytest

    from kdverify import recipes
    from kdverify.errors import KdverifyError
    from kdverify.recipes import register_recipe

    monkeypatch.setattr(recipes, "RECIPES", recipes.RECIPES.copy())
    kd = get_recipe("tiny-kd-0", "paper")
    register_recipe(dataclasses.replace(kd, name="tiny-kd-mnist-teacher", teacher="hinton-teacher"))
    cache = ModelCache(None, {"tiny": load_dataset("tiny")}, "paper", progress=None)
    with pytest.raises(KdverifyError, match="distils on 'tiny' from hinton-teacher, which trains on 'mnist'"):
        cache.get(get_recipe("tiny-kd-mnist-teacher", "paper"))
