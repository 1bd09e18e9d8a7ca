"""Registries: one small API, entry points, and unknown names that say what exists and how to add it."""

from importlib.metadata import EntryPoint

import pytest

from kdverify import data, registry
from kdverify.errors import DataError, KdverifyError
from kdverify.registry import Registry, UnknownName
from kdverify.train import models, objectives, recipes


def test_unknown_architecture_objective_dataset_and_recipe_are_one_line_errors_naming_the_fix():
    cases = [
        # the built-ins first; packages installed next to kdverify (entry points) may add more after them
        (lambda: models.build_model("resnet_tiny"), "unknown architecture 'resnet_tiny' (known: hinton_mlp, "
         "blog_cnn, deep_nn, light_nn"),
        (lambda: objectives.get_objective("mse"), "unknown objective 'mse' (known: ce, kd, cosine, hint"),
        (lambda: recipes.get_recipe("my-student"), "unknown recipe 'my-student' (known: hinton-teacher,"),
        (lambda: data.load_dataset("svhn"), "unknown dataset 'svhn' (known: mnist, cifar10"),
    ]
    for call, message in cases:
        with pytest.raises(KdverifyError) as info:
            call()
        text = str(info.value)
        assert text.startswith(message) and "\n" not in text, text
    with pytest.raises(KdverifyError, match=r"\); register it with kdverify.train.models.register_model in a "
                                            r"module you "
                       "--import, or install the package that provides it$"):
        models.build_model("resnet_tiny")
    with pytest.raises(DataError):  # an unknown dataset is a data problem the claims report, not a crash
        data.load_dataset("svhn")
    with pytest.raises(KeyError):  # and still a KeyError for code that caught that before
        models.build_model("resnet_tiny")


def test_register_refuses_to_replace_silently():
    reg: Registry[int] = Registry("thing", "kdverify.test-none", "add it")
    reg.register("a", 1)
    reg.register("a", 1)  # the same again: a no-op
    with pytest.raises(ValueError, match="thing 'a' is already registered.*replace=True"):
        reg.register("a", 2)
    assert reg.register("a", 2, replace=True) == 2 and reg.lookup("a") == 2
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register(" a", 3)


def test_entry_points_extend_a_registry_with_no_flags(monkeypatch):
    """An installed package declares `[project.entry-points."kdverify.models"] tiny = "pkg:Class"`."""
    points = [EntryPoint("tiny_mlp", "kdverify.train.models:HintonMLP", "kdverify.models"),
              EntryPoint("broken", "no_such_module_xyz:Thing", "kdverify.models")]
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    reg = Registry("architecture", "kdverify.models", "add it")
    points.pop()  # the broken one first as its own case, below
    assert reg.lookup("tiny_mlp") is models.HintonMLP and "tiny_mlp" in reg
    broken = Registry("architecture", "kdverify.models", "add it")
    points.append(EntryPoint("broken", "no_such_module_xyz:Thing", "kdverify.models"))
    with pytest.raises(KdverifyError, match="entry point broken = no_such_module_xyz:Thing \\(kdverify.models\\) "
                                            "cannot be loaded: ModuleNotFoundError"):
        broken.lookup("anything")


def test_a_recipes_entry_point_may_return_several_recipes(monkeypatch):
    fake = [EntryPoint("pkg", "tiny_project:packaged", "kdverify.recipes")]
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in fake if p.group == group])
    import sys
    import types

    module = types.ModuleType("tiny_project")
    module.packaged = lambda: [recipes.Recipe("ep-a", "mnist", "hinton_mlp", epochs=1, lr=0.1),
                               recipes.Recipe("ep-b", "mnist", "hinton_mlp", epochs=2, lr=0.1)]
    monkeypatch.setitem(sys.modules, "tiny_project", module)
    recipes.RECIPES._entry_points_loaded = False
    assert recipes.get_recipe("ep-b", "paper").epochs == 2 and recipes.get_recipe("ep-a", "original").epochs == 1


def test_an_unknown_name_is_caught_as_a_key_error_reads_unquoted_and_the_cli_shows_it_as_one_line(tmp_path):
    """Code that caught KeyError still catches a lookup miss from every name registry, its text is the message
    itself (a bare KeyError would wrap it in quotes), and the CLI turns it into one line, exit 1, nothing written."""
    from click.testing import CliRunner

    from kdverify.cli import main

    for kind, lookup in (("architecture", models.build_model), ("objective", objectives.get_objective),
                         ("recipe", recipes.get_recipe)):
        with pytest.raises(KeyError) as info:
            lookup("no-such-name")
        assert isinstance(info.value, UnknownName)
        assert str(info.value).startswith(f"unknown {kind} 'no-such-name' (known: "), str(info.value)
    out = tmp_path / "x.pt"
    result = CliRunner().invoke(main, ["train", "--recipe", "no-such-name", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("kdverify: error: unknown recipe 'no-such-name' (known: hinton-teacher")
    assert result.output.count("\n") == 1 and not out.exists()
