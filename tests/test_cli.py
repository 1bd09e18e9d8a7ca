"""The CLI through click's runner: listings, and one-line errors with non-zero exits."""

import pytest
from click.testing import CliRunner

from kdverify.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def _epochs_listed(output: str, name: str) -> int:
    line = next(line for line in output.splitlines() if line.split()[:1] == [name])
    return int(line.split()[4])  # name, dataset, arch, objective, epochs


def test_recipes_lists_every_recipe():
    from kdverify.train.recipes import RECIPES, get_recipe

    result = run("recipes")
    assert result.exit_code == 0, result.output
    for name in RECIPES:
        assert name in result.output
    assert _epochs_listed(result.output, "hinton-teacher") == get_recipe("hinton-teacher", "ci").epochs < 1000
    result = run("recipes", "--budget", "original")
    assert result.exit_code == 0, result.output
    assert _epochs_listed(result.output, "hinton-teacher") == 1000


@pytest.mark.parametrize("args,message", [
    (["train", "--recipe", "nope", "--out", "{tmp}/x.pt"], "unknown recipe 'nope'"),
    (["train", "--recipe", "hinton-student-kd", "--out", "{tmp}/x.pt"], "kdverify distill --teacher"),
    (["train", "--recipe", "hinton-teacher", "--out", "{tmp}/missing/x.pt"], "does not exist"),
    (["train", "--recipe", "hinton-teacher", "--out", "{tmp}/x.pt", "--data-root", "{tmp}"], "not found in"),
    (["distill", "--teacher", "{tmp}/none.pt", "--recipe", "hinton-student-kd", "--out", "{tmp}/s.pt"], "no such file"),
    (["evaluate", "{tmp}/none.pt"], "no such file"),
])
def test_errors_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_existing_output_needs_force(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"keep me")
    result = run("train", "--recipe", "hinton-teacher", "--out", str(tmp_path / "x.pt"))
    assert result.exit_code == 1 and "--force" in result.output
    assert (tmp_path / "x.pt").read_bytes() == b"keep me"


def test_pin_ships_a_teacher_trained_with_its_fast_recipe(tmp_path, tiny_mnist, monkeypatch):
    import functools

    import torch

    from kdverify.cache import pinned
    from kdverify.cache.checkpoint import checkpoint_payload, save_checkpoint
    from kdverify.cache.manifest import read_manifest
    from kdverify.train.models import build_model
    from kdverify.train.recipes import get_recipe

    folder = tmp_path / "teachers"
    monkeypatch.setattr(pinned, "pin_teacher", functools.partial(pinned.pin_teacher, folder=folder))
    recipe = get_recipe("hinton-teacher", "paper")
    torch.manual_seed(0)
    model = build_model(recipe.arch, **recipe.arch_kwargs)
    metrics = {"test": {"errors": 70, "total": 10000}, "machine": "a test machine"}
    ckpt = save_checkpoint(tmp_path / "teacher.pt", checkpoint_payload(model, recipe.arch, recipe.arch_kwargs,
                                                                       tiny_mnist, recipe.to_dict(), metrics))
    result = run("pin", str(ckpt))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pinned hinton-teacher: hinton-teacher.pt sha256 ") and "70/10000" in result.output
    entry = read_manifest(folder)["hinton-teacher"]
    assert entry["machine"] == "a test machine" and entry["fingerprint"] == recipe.fingerprint()
    result = run("pin", str(ckpt))
    assert result.exit_code == 1 and "already pinned; pass --force" in result.output
    assert run("pin", str(ckpt), "--force").exit_code == 0
    # a checkpoint of the original (1000-epoch) recipe is not what `ci` distils from
    original = get_recipe("hinton-teacher", "original")
    stale = save_checkpoint(tmp_path / "original.pt", checkpoint_payload(model, original.arch, original.arch_kwargs,
                                                                         tiny_mnist, original.to_dict(), metrics))
    result = run("pin", str(stale), "--force")
    assert result.exit_code == 1 and "was trained with recipe" in result.output and "Traceback" not in result.output
