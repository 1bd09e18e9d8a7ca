"""Recipes from a TOML file: one table per recipe, the same fields as `Recipe`, checked when read.

    [my-teacher]
    dataset = "tiny-shapes"
    arch = "res_cnn"
    epochs = 8
    lr = 3e-3
    optimizer = "adam"
    arch_kwargs = { width = 16 }

    [my-student]
    dataset = "tiny-shapes"
    arch = "dw_cnn"
    objective = "kd"
    teacher = "my-teacher"
    ...
    [my-student.original]   # optional: what differs in the `original` budget
    epochs = 100

An unknown field, a value of the wrong type or out of range, or a teacher the file and the
registry do not know is a one-line error naming the file, the recipe and the field.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from kdverify.errors import KdverifyError
from kdverify.recipes import RECIPES, Recipe, register_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
REQUIRED = [name for name, f in FIELDS.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name != "name"]


class RecipeFileError(KdverifyError):
    """A recipe file that cannot be read or does not describe valid recipes."""


def _recipe(path: Path, name: str, table: dict[str, Any], base: dict[str, Any] | None = None) -> Recipe:
    fields = {k: v for k, v in table.items() if k != "original"}
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RecipeFileError(f"{path}: recipe {name!r}: unknown field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(FIELDS)}")
    if fields.get("name", name) != name:
        raise RecipeFileError(f"{path}: recipe {name!r} sets name = {fields['name']!r}; the table's name is the name")
    values = {**(base or {}), **fields, "name": name}
    missing = [f for f in REQUIRED if f not in values]
    if missing:
        raise RecipeFileError(f"{path}: recipe {name!r}: missing required field(s) {', '.join(missing)}")
    for key in ("keep_classes", "drop_classes"):
        if key in values:
            if not isinstance(values[key], list) or not all(isinstance(c, int) for c in values[key]):
                raise RecipeFileError(f"{path}: recipe {name!r}: {key} must be a list of class indices")
            values[key] = tuple(values[key])
    for key in ("name", "dataset", "arch", "objective", "optimizer", "schedule", "augment", "note", "teacher"):
        if key in values and not isinstance(values[key], str):
            raise RecipeFileError(f"{path}: recipe {name!r}: {key} must be a string, got {values[key]!r}")
    try:
        return Recipe(**values)
    except (ValueError, TypeError, KeyError) as exc:
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        raise RecipeFileError(f"{path}: {message}") from None


def _check_arch_kwargs(path: Path, recipe: Recipe) -> None:
    """arch_kwargs the constructor does not take, or values it refuses (hidden = -5), are a line naming the file,
    recipe and field now, not a torch error after the data has loaded. Built on the meta device: costs nothing."""
    import inspect

    import torch

    from kdverify.models import ARCHITECTURES

    factory = ARCHITECTURES.lookup(recipe.arch)
    try:
        inspect.signature(factory).bind_partial(**recipe.arch_kwargs)
    except TypeError as exc:
        raise RecipeFileError(f"{path}: recipe {recipe.name!r}: arch_kwargs: {recipe.arch} {exc}") from None
    try:
        with torch.device("meta"):
            factory(**recipe.arch_kwargs)
    except TypeError:
        return  # it needs the data's shape arguments too: checked when the data is there
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise RecipeFileError(f"{path}: recipe {recipe.name!r}: arch_kwargs {recipe.arch_kwargs} are refused by "
                              f"{recipe.arch}: {str(exc).strip().splitlines()[0][:200]}") from None


def read_recipe_file(path: str | os.PathLike) -> list[tuple[Recipe, Recipe]]:
    """(fast, original) recipe pairs of a TOML file, validated, not yet registered."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RecipeFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeFileError(f"{path}: not valid TOML: {exc}") from None
    if not document:
        raise RecipeFileError(f"{path}: no recipes (one [table] per recipe)")
    pairs = []
    for name, table in document.items():
        if not isinstance(table, dict):
            raise RecipeFileError(f"{path}: {name!r} must be a [table] of recipe fields, not a value")
        fast = _recipe(path, name, table)
        original = table.get("original")
        if original is not None and not isinstance(original, dict):
            raise RecipeFileError(f"{path}: recipe {name!r}: 'original' must be a table of fields that differ")
        base = {k: v for k, v in table.items() if k != "original"}
        pairs.append((fast, _recipe(path, name, original, base) if original else fast))
    names = {fast.name for fast, _ in pairs}
    from kdverify.data import LOADERS
    from kdverify.models import ARCHITECTURES

    for fast, _ in pairs:
        for kind, value, registry in (("dataset", fast.dataset, LOADERS), ("arch", fast.arch, ARCHITECTURES)):
            if value not in registry:
                raise RecipeFileError(f"{path}: recipe {fast.name!r}: unknown {kind} {value!r} (known: "
                                      f"{', '.join(registry)}); --import the module that registers it")
        _check_arch_kwargs(path, fast)
        if fast.teacher and fast.teacher not in names and fast.teacher not in RECIPES:
            raise RecipeFileError(f"{path}: recipe {fast.name!r}: teacher {fast.teacher!r} is neither in this file "
                                  "nor registered")
    return pairs


def load_recipe_file(path: str | os.PathLike, replace: bool = False) -> list[Recipe]:
    """Read, validate and register every recipe of a TOML file; returns the fast recipes."""
    pairs = read_recipe_file(path)
    for fast, original in pairs:
        try:
            register_recipe(fast, original, replace=replace)
        except ValueError as exc:
            if fast.name in RECIPES and not replace:
                raise RecipeFileError(f"{path}: recipe {fast.name!r} is already registered (a built-in, or a "
                                      "module's): a recipe file cannot replace it; give yours another name") from None
            raise RecipeFileError(f"{path}: {exc}") from None
    from kdverify.compat import check_recipe

    for fast, original in pairs:  # students against their teachers, on the meta device, when the data is declared
        for budget, recipe in (("ci", fast), ("original", original)):
            try:
                check_recipe(recipe, budget, where=str(path))
            except KdverifyError as exc:
                raise RecipeFileError(str(exc)) from None
    return [fast for fast, _ in pairs]
