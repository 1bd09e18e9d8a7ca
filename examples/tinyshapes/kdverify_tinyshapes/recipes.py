"""The example's recipes live in `recipes.toml`; the `kdverify.recipes` entry point registers them."""

from __future__ import annotations

from pathlib import Path

from kdverify.train.recipe_file import read_recipe_file
from kdverify.train.recipes import Recipe

RECIPE_FILE = Path(__file__).with_name("recipes.toml")


def packaged_recipes() -> list[Recipe]:
    """The fast recipes of the packaged TOML (this example uses the same recipe in every budget)."""
    return [fast for fast, _ in read_recipe_file(RECIPE_FILE)]
