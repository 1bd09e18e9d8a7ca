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

from kdverify.errors import KdverifyError, first_line
from kdverify.train.recipes import RECIPES, SEED_LIMIT, Recipe, register_recipe

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


# The training splits of the built-in datasets (their files are checksummed, so these never vary): a holdout or a
# class-balanced subset they cannot give is refused when the file is read, not after the data has loaded.
# (examples in the split, examples of its smallest class)
TRAIN_SPLITS = {"mnist": (60_000, 5_421), "cifar10": (50_000, 5_000)}


def _fail(path: Path, recipe: Recipe, text: str) -> RecipeFileError:
    return RecipeFileError(f"{path}: recipe {recipe.name!r}: {text}")


def _check_data_fields(path: Path, recipe: Recipe) -> None:
    """seed, class filters, train_subset and holdout against what the dataset can give, as far as it is known
    before loading it (classes where the dataset declares its shape, split sizes for the built-ins)."""
    from kdverify.data import DATASET_SHAPES

    if recipe.seed >= SEED_LIMIT:
        raise _fail(path, recipe, f"seed = {recipe.seed} must be below 2**62 (torch seeds are 64-bit)")
    classes = DATASET_SHAPES[recipe.dataset][1] if recipe.dataset in DATASET_SHAPES else None
    for key in ("keep_classes", "drop_classes"):
        wrong = [c for c in getattr(recipe, key) if c < 0 or (classes is not None and c >= classes)]
        if wrong:
            known = f"0..{classes - 1} ({recipe.dataset} has {classes} classes)" if classes else "non-negative"
            raise _fail(path, recipe, f"{key} = {list(getattr(recipe, key))}: class {wrong[0]} is not a class "
                                      f"index; they are {known}")
    if classes is not None:
        left = set(recipe.keep_classes or range(classes)) - set(recipe.drop_classes)
        if not left:
            raise _fail(path, recipe, f"keep_classes = {list(recipe.keep_classes)} and drop_classes = "
                                      f"{list(recipe.drop_classes)} leave no class to train on")
        if recipe.train_subset and recipe.train_subset % classes:
            raise _fail(path, recipe, f"train_subset = {recipe.train_subset:,} must be a multiple of {classes} "
                                      f"(the subset is class-balanced over {recipe.dataset}'s {classes} classes)")
    if recipe.dataset in TRAIN_SPLITS and classes is not None:
        size, smallest = TRAIN_SPLITS[recipe.dataset]
        if recipe.train_subset > smallest * classes:
            raise _fail(path, recipe, f"train_subset = {recipe.train_subset:,} is more than a class-balanced subset "
                                      f"of {recipe.dataset} can hold ({smallest * classes:,}: its smallest class has "
                                      f"{smallest:,} training examples)")
        available = recipe.train_subset or size
        if recipe.holdout >= available:
            what = f"train_subset = {available:,}" if recipe.train_subset else \
                f"{recipe.dataset}'s training split has {size:,} examples"
            raise _fail(path, recipe, f"holdout = {recipe.holdout:,} leaves nothing to train on ({what})")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return None


def _check_arch_kwargs(path: Path, recipe: Recipe) -> None:
    """arch_kwargs the constructor does not take, values of the wrong type or that it refuses (hidden = -5),
    shape arguments that do not fit the data (num_classes = 5 on MNIST) and weights larger than this machine's
    memory are a line naming the file, recipe and field now, not a torch error after the data has loaded or an
    epoch has run. Built on the meta device (and run there, when the dataset declares its shape): costs nothing."""
    import inspect

    import torch

    from kdverify.data import DATASET_SHAPES
    from kdverify.train.models import ARCHITECTURES, shape_kwargs

    factory = ARCHITECTURES.lookup(recipe.arch)
    kwargs = recipe.arch_kwargs
    prefix = f"arch_kwargs {kwargs}"
    try:
        signature = inspect.signature(factory)
        signature.bind_partial(**kwargs)
    except ValueError:  # pragma: no cover - a builtin without a signature: nothing to check against
        return
    except TypeError as exc:
        raise _fail(path, recipe, f"arch_kwargs: {recipe.arch} {exc}") from None
    for key, value in kwargs.items():  # a value of another type than the constructor's default
        param = signature.parameters.get(key)
        default = param.default if param is not None else inspect.Parameter.empty
        kind = next((k for k in _KINDS if isinstance(default, k)), None) if default is not None else None
        if kind is not None and not _is_a(value, kind):
            raise _fail(path, recipe, f"arch_kwargs: {key} = {value!r} must be {_KINDS[kind]} ({recipe.arch}'s "
                                      f"default is {default!r})")
    shape = DATASET_SHAPES.get(recipe.dataset)
    full = {**shape_kwargs(recipe.arch, *shape), **kwargs} if shape else dict(kwargs)
    try:
        signature.bind(**full)
    except TypeError:
        if not kwargs:
            return
        try:  # it needs the data's shape arguments too: the values are checked when the data is there
            with torch.device("meta"):
                factory(**full)
        except TypeError:
            return
        except _REFUSALS as exc:
            raise _fail(path, recipe, f"{prefix} are refused by {recipe.arch}: {first_line(exc)[:200]}") from None
        return
    try:
        with torch.device("meta"):
            model = factory(**full)
    except (TypeError, *_REFUSALS) as exc:
        raise _fail(path, recipe, f"{prefix} are refused by {recipe.arch}: {first_line(exc)[:200]}") from None
    if shape:
        try:
            with torch.device("meta"):
                outputs = model.eval()(torch.empty(2, *shape[0]))
        except (TypeError, *_REFUSALS) as exc:
            raise _fail(path, recipe, f"{prefix}: {recipe.arch} does not run on {recipe.dataset} inputs "
                                      f"{tuple(shape[0])}: {first_line(exc)[:200]}") from None
        if not isinstance(outputs, torch.Tensor) or tuple(outputs.shape) != (2, shape[1]):
            got = tuple(outputs.shape[1:]) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise _fail(path, recipe, f"{prefix}: {recipe.arch} gives outputs of shape {got} per example; "
                                      f"{recipe.dataset} has {shape[1]} classes")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = _physical_memory()
    if memory and weights > memory:
        raise _fail(path, recipe, f"{prefix}: {recipe.arch}'s weights alone would take {weights / 2**30:,.1f} GiB; "
                                  f"this machine has {memory / 2**30:,.1f} GiB of memory")


_REFUSALS = (ValueError, RuntimeError, OverflowError, IndexError, ZeroDivisionError, AssertionError)
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}  # bool before int


def _is_a(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)




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
    from kdverify.train.models import ARCHITECTURES

    for fast, _ in pairs:
        for kind, value, registry in (("dataset", fast.dataset, LOADERS), ("arch", fast.arch, ARCHITECTURES)):
            if value not in registry:
                raise RecipeFileError(f"{path}: recipe {fast.name!r}: unknown {kind} {value!r} (known: "
                                      f"{', '.join(registry)}); --import the module that registers it")
        if fast.teacher and fast.teacher not in names and fast.teacher not in RECIPES:
            raise RecipeFileError(f"{path}: recipe {fast.name!r}: teacher {fast.teacher!r} is neither in this file "
                                  "nor registered")
    for fast, original in pairs:  # the original budget's fields too: its table may change them
        for recipe, label in ((fast, ""), (original, " (its original table)")):
            if label and original == fast:
                continue
            try:
                _check_data_fields(path, recipe)
                _check_arch_kwargs(path, recipe)
            except RecipeFileError as exc:
                if not label:
                    raise
                head = f"{path}: recipe {recipe.name!r}"
                raise RecipeFileError(head + label + str(exc)[len(head):]) from None
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
    from kdverify.train.compat import check_recipe

    for fast, original in pairs:  # students against their teachers, on the meta device, when the data is declared
        for budget, recipe in (("ci", fast), ("original", original)):
            try:
                check_recipe(recipe, budget, where=str(path))
            except KdverifyError as exc:
                raise RecipeFileError(str(exc)) from None
    return [fast for fast, _ in pairs]
