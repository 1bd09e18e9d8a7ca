"""`kdverify` command line: recipes, train, distill, evaluate, export.

Every user-fixable failure is one line on stderr and exit status 1 (2 for usage errors),
never a traceback; outputs are written atomically and never overwritten without --force.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click
import torch

from kdverify.errors import KdverifyError
from kdverify.recipes import BUDGETS


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KdverifyError, KeyError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            click.echo(f"kdverify: error: {message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("kdverify: interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdverifyError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                help="Folder in torchvision's layout (default: $KDVERIFY_DATA, else the user cache).")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
budget_option = click.option("--budget", type=click.Choice(list(BUDGETS)), default="ci", show_default=True,
                             help="ci/paper: kdverify's fast recipes (ci distils from the pinned teachers); "
                                  "original: the reference work's own recipe.")


@click.group()
@click.version_option(package_name="kdverify")
def main() -> None:
    """Reproduce knowledge-distillation claims and ship verified students."""


@main.command("recipes")
@budget_option
def recipes_command(budget: str) -> None:
    """List the training recipes (names for --recipe)."""
    from kdverify.recipes import RECIPES, get_recipe

    click.echo(f"{'name':<26} {'dataset':<8} {'arch':<11} {'objective':<9} {'epochs':>6} {'teacher':<16} note")
    for name in RECIPES:
        r = get_recipe(name, budget)
        click.echo(f"{name:<26} {r.dataset:<8} {r.arch:<11} {r.objective:<9} {r.epochs:>6} "
                   f"{r.teacher or '-':<16} {r.note}")


def _train_and_save(recipe_name: str, budget: str, out: str, force: bool, data_root: str | None, device: str,
                    seed: int | None, epochs: int | None, teacher_path: str | None) -> None:
    import dataclasses

    from kdverify.cache import result_metrics
    from kdverify.checkpoint import checkpoint_payload, load_checkpoint
    from kdverify.data import load_dataset
    from kdverify.recipes import get_recipe
    from kdverify.train import fit

    out_path = Path(out)
    if out_path.exists() and not force:
        raise KdverifyError(f"{out_path} exists; pass --force to overwrite it")
    if not out_path.parent.is_dir():
        raise KdverifyError(f"output folder {out_path.parent} does not exist")
    recipe = get_recipe(recipe_name, budget)
    if seed is not None:
        recipe = recipe.with_seed(seed)
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    if recipe.teacher and not teacher_path:
        raise KdverifyError(f"recipe {recipe.name} distils from a teacher: use "
                            f"`kdverify distill --teacher TEACHER.pt --recipe {recipe.name}`")
    dev = resolve_device(device)
    teacher = None
    if teacher_path:
        ckpt = load_checkpoint(teacher_path, map_location=dev)
        expected = get_recipe(recipe.teacher, budget).arch if recipe.teacher else None
        if expected and ckpt.arch != expected:
            raise KdverifyError(f"{teacher_path} is a {ckpt.arch}; recipe {recipe.name} needs a {expected} teacher")
        teacher = ckpt.model.to(dev)
    dataset = load_dataset(recipe.dataset, data_root, dev)
    click.echo(f"training {recipe.name} ({budget} budget, {recipe.epochs} epochs) on {dataset.variant}, {dev}",
               err=True)
    result = fit(recipe, dataset, teacher=teacher)
    payload = checkpoint_payload(result.model, recipe.arch, recipe.arch_kwargs, dataset, recipe.to_dict(),
                                 result_metrics(result, recipe.fingerprint()))
    from kdverify.checkpoint import save_checkpoint

    save_checkpoint(out_path, payload, force=force)
    ev = result.evaluation
    click.echo(f"wrote {out_path}: {recipe.name}, test errors {ev.errors}/{ev.total} "
               f"({100 * ev.error_rate:.2f}%), {result.seconds:.0f}s")


def _training_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--recipe", "recipe_name", required=True, help="Recipe name (see `kdverify recipes`)."),
        budget_option,
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write."),
        click.option("--force", is_flag=True, help="Overwrite an existing output."),
        data_root_option, device_option,
        click.option("--seed", type=int, default=None, help="Override the recipe's seed."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe's epochs."),
    ]):
        fn = option(fn)
    return fn


@main.command("train")
@_training_options
@_one_line_errors
def train_command(recipe_name: str, budget: str, out: str, force: bool, data_root: str | None, device: str,
                  seed: int | None, epochs: int | None) -> None:
    """Train a model from scratch on hard labels (teachers, baselines)."""
    _train_and_save(recipe_name, budget, out, force, data_root, device, seed, epochs, None)


@main.command("distill")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False),
              help="Teacher checkpoint written by `kdverify train`.")
@_training_options
@_one_line_errors
def distill_command(teacher_path: str, recipe_name: str, budget: str, out: str, force: bool,
                    data_root: str | None, device: str, seed: int | None, epochs: int | None) -> None:
    """Train a student from a teacher checkpoint (KD, cosine or hint objective)."""
    _train_and_save(recipe_name, budget, out, force, data_root, device, seed, epochs, teacher_path)


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path())
@data_root_option
@device_option
@_one_line_errors
def evaluate_command(checkpoint: str, data_root: str | None, device: str) -> None:
    """Test errors, per-class errors and confusion matrix of a checkpoint on real data."""
    from kdverify.checkpoint import load_checkpoint
    from kdverify.data import load_dataset
    from kdverify.train import evaluate

    ckpt = load_checkpoint(checkpoint)
    dataset_name = ckpt.recipe.get("dataset") or ("cifar10" if ckpt.input_shape[:1] == (3,) else "mnist")
    dev = resolve_device(device)
    dataset = load_dataset(dataset_name, data_root, dev)
    ev = evaluate(ckpt.model.to(dev), dataset.test, ckpt.mean, ckpt.std)
    click.echo(f"{checkpoint}: {ckpt.arch} on {dataset.variant}: {ev.errors}/{ev.total} errors "
               f"({100 * ev.error_rate:.2f}%)")
    click.echo("per class: " + "  ".join(f"{c}:{e}" for c, e in zip(dataset.classes, ev.per_class_errors)))


@main.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", type=click.Path(), default=None,
              help="ONNX file to write (default: exports/<checkpoint stem>.onnx).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write an int8 model (<out stem>.int8.onnx), judged by test accuracy.")
@click.option("--batch-dynamic/--no-batch-dynamic", default=True, show_default=True,
              help="Dynamic batch axis, or a fixed batch of 1.")
@click.option("--atol", type=click.FloatRange(min=0.0), default=1e-4, show_default=True,
              help="Largest |logit difference| allowed between ONNX Runtime and PyTorch.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@data_root_option
@_one_line_errors
def export_command(checkpoint: str, out: str | None, opset: int | None, quantize: str | None, batch_dynamic: bool,
                   atol: float, force: bool, data_root: str | None) -> None:
    """Export a checkpoint to ONNX, validated against PyTorch before it is written."""
    from kdverify.export import DEFAULT_OPSET, export_checkpoint

    export_checkpoint(checkpoint, Path(out) if out else None, opset=DEFAULT_OPSET if opset is None else opset,
                      quantize=quantize, batch_dynamic=batch_dynamic, atol=atol, force=force,
                      data_root=data_root, log=click.echo)


@main.command("pin")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--trainer-version", default=None,
              help="Trainer version that trained it (default: recorded in the checkpoint, else the current one).")
@click.option("--force", is_flag=True, help="Replace a teacher that is already pinned.")
@_one_line_errors
def pin_command(checkpoint: str, trainer_version: str | None, force: bool) -> None:
    """Ship a teacher trained with its fast recipe (`paper` budget) as the pinned teacher `ci` distils from."""
    from kdverify.checkpoint import load_checkpoint, machine_description
    from kdverify.pinned import pin_teacher
    from kdverify.recipes import PINNED_TEACHERS, get_recipe
    from kdverify.train import TRAINER_VERSION

    ckpt = load_checkpoint(checkpoint)
    name = str(ckpt.recipe.get("name"))
    if name not in PINNED_TEACHERS:
        raise KdverifyError(f"{checkpoint} is a {name!r} model; ci pins only the teachers {', '.join(PINNED_TEACHERS)}")
    recipe = get_recipe(name, "paper")
    entry = pin_teacher(checkpoint, recipe, trainer_version or ckpt.metrics.get("trainer_version", TRAINER_VERSION),
                        ckpt.metrics.get("machine") or machine_description(), force=force)
    click.echo(f"pinned {recipe.name}: {entry['file']} sha256 {entry['sha256'][:16]}, "
               f"{entry['test_errors']}/{entry['test_total']} test errors")


@main.command("cache-add")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@budget_option
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Model cache folder.")
@data_root_option
@_one_line_errors
def cache_add_command(checkpoint: str, budget: str, cache: str | None, data_root: str | None) -> None:
    """Adopt a model trained by `kdverify train` (e.g. a long teacher run) as the budget's cache entry."""
    from kdverify.cache import ModelCache
    from kdverify.checkpoint import load_checkpoint
    from kdverify.data import load_dataset

    dataset_name = str(load_checkpoint(checkpoint).recipe.get("dataset"))
    datasets = {dataset_name: load_dataset(dataset_name, data_root)}
    click.echo(f"cached as {ModelCache(cache, datasets, budget).adopt(checkpoint)}")


@main.command("calibrate")
@click.option("--seeds", "seeds", type=int, multiple=True, default=(0, 3, 6), show_default=True,
              help="Seed offsets (repeat the option); every recipe the budget trains is trained at each.")
@budget_option
@data_root_option
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Model cache folder.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the measurements as JSON.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@click.option("--claim", "claim_ids", multiple=True, help="Only these claim ids (repeatable).")
@_one_line_errors
def calibrate_command(seeds: tuple[int, ...], budget: str, data_root: str | None, cache: str | None,
                      out: str | None, force: bool, claim_ids: tuple[str, ...]) -> None:
    """Measure every claim at several seeds: values, and the worst seed's margin to its fixed threshold."""
    from kdverify.calibrate import calibrate

    calibrate(seeds, budget, data_root, cache, Path(out) if out else None, claim_ids or None, force=force)


if __name__ == "__main__":
    main()
