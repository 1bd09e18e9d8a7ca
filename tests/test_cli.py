"""The CLI through click's runner: listings, and one-line errors with non-zero exits."""

import pytest
from click.testing import CliRunner

from kdverify.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_recipes_lists_every_recipe():
    from kdverify.recipes import RECIPES

    result = run("recipes")
    assert result.exit_code == 0
    for name in RECIPES:
        assert name in result.output
    assert " 1000 " in run("recipes", "--budget", "paper").output


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
