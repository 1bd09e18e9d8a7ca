"""Which teacher/student pairs the inference benchmarks time: the built-in ones, or the user's two checkpoints.

Everything a benchmark needs to know about a model (input shape, class count, normalisation,
dataset, label) comes from its checkpoint, so any pair of kdverify checkpoints can be timed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from kdverify.cache.checkpoint import Checkpoint

ENV_TEACHER = "KDVERIFY_BENCH_TEACHER"
ENV_STUDENT = "KDVERIFY_BENCH_STUDENT"
ROLES = ("teacher", "student")
# pair -> (teacher recipe, student recipe): a recipe names the cache files and, for fresh weights, the architecture.
BUILT_IN = {
    "mnist-mlp": ("hinton-teacher", "hinton-student-kd"),
    "cifar-cnn": ("tutorial-deepnn", "tutorial-lightnn-kd"),
}
PAIRS_KEY = pytest.StashKey[list["Pair"]]()


@dataclass
class Model:
    """One benchmarked model and what describes it (its ONNX files are added as they are exported)."""

    role: str  # teacher | student
    label: str  # the recipe's name, else the architecture
    arch: str
    model: torch.nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str  # registered dataset name its test errors are on ("" when the checkpoint does not say)
    weights: str  # where the weights came from, in words
    trained: bool
    test_errors: int | None = None
    test_total: int | None = None
    test_note: str = ""  # where the test errors come from, or why there are none
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> file
    int8_method: str = ""

    def __post_init__(self) -> None:
        from kdverify.train.models import count_parameters, forward_flops

        self.model.eval()
        self.params = count_parameters(self.model)
        self.flops = forward_flops(self.model, self.input_shape)  # per sample, 2 per multiply-add

    @property
    def key(self) -> str:
        """Unique within a run (a user pair may have two models of one recipe): names its ONNX files."""
        return re.sub(r"[^\w.-]+", "_", f"{self.role}-{self.label}")


@dataclass
class Pair:
    name: str
    load: Callable[[], tuple[Model, Model]]  # (teacher, student), called once, on first use


def from_checkpoint(ckpt: Checkpoint, role: str, source: str) -> Model:
    """Input shape, class count, normalisation, dataset, label and test errors, all as the checkpoint records them."""
    channels = ckpt.input_shape[0]
    fits = len(ckpt.mean) == len(ckpt.std) == channels  # else an old file without normalisation: pixels in [0, 1]
    test = ckpt.metrics.get("test") if isinstance(ckpt.metrics.get("test"), dict) else {}
    epochs = ckpt.recipe.get("epochs")
    model = Model(role, ckpt.recipe.get("name") or ckpt.arch, ckpt.arch, ckpt.model, tuple(ckpt.input_shape),
                  len(ckpt.classes) or _outputs(ckpt.model, ckpt.input_shape),
                  tuple(ckpt.mean) if fits else (0.0,) * channels, tuple(ckpt.std) if fits else (1.0,) * channels,
                  ckpt.dataset or ckpt.recipe.get("dataset") or "",
                  f"trained: {source}" + (f" ({epochs} epochs, {ckpt.dataset_variant})" if epochs else ""), True)
    if test.get("errors") is not None and test.get("total"):
        model.test_errors, model.test_total = int(test["errors"]), int(test["total"])
        model.test_note = f"recorded in the checkpoint ({model.dataset or 'dataset not recorded'})"
    return model


def _outputs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width of the logits, for a checkpoint that records no class names."""
    with torch.inference_mode():
        return int(model.eval()(torch.zeros(1, *input_shape)).shape[-1])


# ---------------------------------------------------------------- the user's pair


def _path_option(config: pytest.Config, option: str, env: str) -> tuple[str, str]:
    """(path, where it came from) of --bench-teacher / --bench-student, else its environment variable."""
    value = config.getoption(option, None)
    return (value, option) if value else (os.environ.get(env, ""), f"${env}")


def _load_user(path: str, source: str, role: str) -> Model:
    from kdverify.cache.checkpoint import load_checkpoint
    from kdverify.errors import KdverifyError, first_line

    try:
        ckpt = load_checkpoint(Path(path).expanduser())
    except KdverifyError as exc:
        raise pytest.UsageError(f"{source}: {first_line(exc)}") from None
    return from_checkpoint(ckpt, role, path)


def user_pair(config: pytest.Config) -> Pair | None:
    """The pair given by --bench-teacher and --bench-student, checked now so a mistake is one usage line."""
    (teacher, t_src), (student, s_src) = (_path_option(config, "--bench-teacher", ENV_TEACHER),
                                          _path_option(config, "--bench-student", ENV_STUDENT))
    if not teacher and not student:
        return None
    if not (teacher and student):
        missing, env = ("--bench-student", ENV_STUDENT) if teacher else ("--bench-teacher", ENV_TEACHER)
        raise pytest.UsageError(f"{t_src if teacher else s_src} needs {missing} (or ${env}) too: a pair is a "
                                "teacher and a student; give neither option for the built-in pairs")
    t, s = _load_user(teacher, t_src, "teacher"), _load_user(student, s_src, "student")
    for what, a, b in (("input shape", t.input_shape, s.input_shape), ("class count", t.num_classes, s.num_classes)):
        if a != b:
            raise pytest.UsageError(f"teacher {teacher} has {what} {a} but student {student} has {b}: "
                                    "a pair must take the same inputs and predict the same classes")
    return Pair(f"{t.label}-vs-{s.label}", lambda: (t, s))


# ---------------------------------------------------------------- the built-in pairs


def _candidates(cache_dir: Path, recipe: str) -> list[Path]:
    """`<recipe>-seed<N>-<key>.pt` in the cache, newest first, then kdverify's pinned checkpoint of `recipe`."""
    from kdverify.cache.manifest import read_manifest
    from kdverify.cache.store import ModelCache
    from kdverify.paths import TEACHERS_DIR

    try:
        found = ModelCache(cache_dir, {}, progress=None).entries(recipe)
    except OSError:
        found = []
    pinned = read_manifest().get(recipe)
    return found + ([TEACHERS_DIR / pinned["file"]] if pinned else [])


def _trained(recipe_name: str, role: str, cache_dir: Path) -> Model | str:
    """The first readable checkpoint of the recipe's architecture, else why there is none."""
    from kdverify.cache.checkpoint import load_checkpoint
    from kdverify.errors import KdverifyError
    from kdverify.train.recipes import get_recipe

    arch, problems = get_recipe(recipe_name, "original").arch, []
    for path in _candidates(cache_dir, recipe_name):
        try:
            ckpt = load_checkpoint(path)
        except KdverifyError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if ckpt.arch != arch:
            problems.append(f"{path.name}: architecture {ckpt.arch}, expected {arch}")
            continue
        model = from_checkpoint(ckpt, role, str(path))
        model.weights += f"; skipped newer: {'; '.join(problems)}" if problems else ""
        return model
    return "; ".join(problems) or f"no {recipe_name}-seed*-*.pt in {cache_dir}"


def _fresh(recipe_name: str, role: str, like: Model, why: str) -> Model:
    """Seed-0 weights of the recipe's architecture, described by the pair's other (checkpointed) model."""
    from kdverify.train.models import build_model, shape_kwargs
    from kdverify.train.recipes import get_recipe

    recipe = get_recipe(recipe_name, "original")  # the original architecture (eval mode: dropout rates do not matter)
    torch.manual_seed(0)  # shaped like the partner's data, as the trainer builds a recipe's model for its dataset
    model = build_model(recipe.arch, **{**shape_kwargs(recipe.arch, like.input_shape, like.num_classes),
                                        **recipe.arch_kwargs})
    return Model(role, recipe_name, recipe.arch, model, like.input_shape, like.num_classes, like.mean, like.std,
                 like.dataset, f"fresh init, seed 0 ({why})", False, test_note="untrained")


def load_built_in(name: str, cache_dir: Path) -> tuple[Model, Model]:
    """Trained checkpoints where there are any; a model without one takes the inputs its partner's describes."""
    recipes = BUILT_IN[name]
    found = [_trained(recipe, role, cache_dir) for recipe, role in zip(recipes, ROLES)]
    like = next((m for m in found if isinstance(m, Model)), None)
    if like is None:
        raise LookupError(f"{name}: no checkpoint of {' or '.join(recipes)} says what inputs they take ({found[0]})")
    teacher, student = (m if isinstance(m, Model) else _fresh(recipe, role, like, m)
                        for m, recipe, role in zip(found, recipes, ROLES))
    return teacher, student


def user_pair_given(config: pytest.Config) -> bool:
    """Whether the run times a pair of the user's (--bench-teacher / --bench-student or their variables)."""
    return any(_path_option(config, option, env)[0] for option, env in (("--bench-teacher", ENV_TEACHER),
                                                                        ("--bench-student", ENV_STUDENT)))


def pairs_from(config: pytest.Config, cache_dir: Path) -> list[Pair]:
    """The user's pair when one is given, else the built-in ones (loaded lazily: `-k mnist` never reads CIFAR's)."""
    mine = user_pair(config)
    if mine is not None:
        return [mine]
    return [Pair(name, lambda name=name: load_built_in(name, cache_dir)) for name in BUILT_IN]
