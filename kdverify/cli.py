"""`kdverify` command line: recipes, train, distill, evaluate, export, pin, cache-add, calibrate, reference, plan.

Every user-fixable failure is one line on stderr and exit status 1 (2 for usage errors),
never a traceback; outputs are written atomically and never overwritten without --force.
Ctrl-C exits 130 and SIGTERM 143, both after `finally` blocks have removed temporaries.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from kdverify.errors import KdverifyError
from kdverify.paths import IMPORT_ENV, imports_from_env
from kdverify.startup import DEVICE_CHOICES, import_user_modules, load_recipe_files, resolve_device
from kdverify.train.recipes import BUDGETS, MAX_EPOCHS

SEED_MAX = 2**63 - 1  # torch seeds are 64-bit; a larger one would fail only after the data is loaded


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so `finally` blocks remove temporaries; exits 143, not 130."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _fail(message: str) -> None:
    click.echo(f"kdverify: error: {message}", err=True)
    sys.exit(1)


def _warn(message: str) -> None:
    click.echo(f"kdverify: warning: {message}", err=True)


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (KdverifyError, KeyError, ValueError) as exc:
            _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            click.echo(f"kdverify: interrupted; nothing was written{' (SIGTERM)' if terminated else ''}", err=True)
            sys.exit(143 if terminated else 130)

    return wrapper


def _set_deterministic(deterministic: bool) -> None:
    """Before anything is built, so every model, table and kernel choice is made in the mode."""
    if deterministic:
        from kdverify.train import determinism

        determinism.set_deterministic()


def _import_user_modules(names: list[str]) -> None:
    try:
        import_user_modules(names, search=os.getcwd(), how=f"--import / ${IMPORT_ENV}")
    except KdverifyError as exc:
        _fail(str(exc))


data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                help="Folder in torchvision's layout (default: $KDVERIFY_DATA, else the user cache).")
device_option = click.option("--device", default="auto", show_default=True, help=f"{DEVICE_CHOICES}.")
budget_option = click.option("--budget", type=click.Choice(list(BUDGETS)), default="ci", show_default=True,
                             help="ci/paper: kdverify's fast recipes (ci distils from the pinned teachers); "
                                  "original: the reference work's own recipe.")
def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """nan passes every range comparison and inf would switch a check off: a usage error, exit 2."""
    import math

    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


def _load_recipe_files(ctx: click.Context, param: click.Parameter, paths: tuple[str, ...]) -> None:
    """Register the recipes of each TOML file before the command looks its --recipe up."""
    try:
        load_recipe_files(paths)
    except KdverifyError as exc:  # one line, as every other usage error (not click's usage block above it)
        click.echo(f"kdverify: error: {exc}", err=True)
        ctx.exit(2)


recipe_file_option = click.option(
    "--recipe-file", type=click.Path(dir_okay=False), multiple=True, expose_value=False, callback=_load_recipe_files,
    help="TOML file of recipes (one [table] per recipe, Recipe's fields), registered before the command; repeatable.")
deterministic_option = click.option(
    "--deterministic", is_flag=True,
    help="Pin torch to 1 thread and use deterministic kernels (bit-identical reruns on one machine; slower).")


@click.group()
@click.version_option(package_name="kdverify")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help=f"Import MODULE first (repeatable; found on sys.path, then in the current directory), e.g. one "
                   f"that registers models, datasets or recipes. ${IMPORT_ENV}: comma-separated modules, imported "
                   "before these.")
@click.pass_context
def main(ctx: click.Context, imports: tuple[str, ...]) -> None:
    """Reproduce knowledge-distillation claims and ship verified students."""
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)  # None: set outside Python, i.e. the default
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous))
    names = imports_from_env() + list(imports)
    _import_user_modules(list(dict.fromkeys(names)))


def _optimizer_text(r: Any) -> str:
    """'sgd-nesterov', 'sgd-momentum', 'adam,wd=1e-05': one token, so the table splits on spaces."""
    text = r.optimizer + ("-nesterov" if r.nesterov else "-momentum" if r.momentum else "")
    return text + (f",wd={r.weight_decay:g}" if r.weight_decay else "")


@main.command("recipes")
@budget_option
@recipe_file_option
def recipes_command(budget: str) -> None:
    """List the training recipes (names for --recipe) with the values the budget trains with."""
    from kdverify.train.recipes import RECIPES, get_recipe, recipe_kind

    header = ("name", "dataset", "arch", "objective", "epochs", "batch", "optimizer", "lr", "schedule", "T", "alpha",
              "augment", "teacher")
    rows = []
    for name in RECIPES:
        r = get_recipe(name, budget)
        distils = r.objective != "ce"
        note = r.note
        original = RECIPES[name]["original"]
        if recipe_kind(budget) != "original" and note and note == original.note and r != original:
            note = f"original recipe: {note}"  # a fast recipe without its own note: the note is not what runs
        rows.append(((r.name, r.dataset, r.arch, r.objective, str(r.epochs), str(r.batch_size), _optimizer_text(r),
                      f"{r.lr:g}", r.schedule, f"{r.temperature:g}" if r.objective == "kd" else "-",
                      f"{r.soft_weight:g}" if distils else "-", r.augment, r.teacher or "-"), note))
    widths = [max(len(h), *(len(row[i]) for row, _ in rows)) for i, h in enumerate(header)]
    numeric = {"epochs", "batch", "lr", "T", "alpha"}

    def line(cells: tuple[str, ...], note: str) -> str:
        return "  ".join(c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header)) + \
            f"  {note}"

    click.echo(line(header, "note"))
    for cells, note in rows:
        click.echo(line(cells, note or "-"))


def _save_or_rescue(out_path: Path, payload: dict, force: bool, recipe_name: str) -> None:
    """A failure after training (disk full, folder gone) must not throw the model away: it is kept
    under the user cache, and the one-line error says where."""
    from kdverify.cache.checkpoint import save_checkpoint
    from kdverify.io import describe_os_error
    from kdverify.paths import rescue_dir

    try:
        save_checkpoint(out_path, payload, force=force)
        return
    except Exception as exc:  # noqa: BLE001 - whatever failed, the trained model is kept
        failure = str(exc) if isinstance(exc, KdverifyError) else (
            f"cannot write {out_path}: {describe_os_error(exc) if isinstance(exc, OSError) else repr(exc)}")
    stem = re.sub(r"[^\w.-]", "_", recipe_name) + "-" + time.strftime("%Y%m%d-%H%M%S")
    rescue = rescue_dir() / f"{stem}.pt"
    if rescue.exists():
        rescue = rescue.with_name(f"{stem}-{os.getpid()}.pt")
    try:
        save_checkpoint(rescue, payload)
    except Exception as exc:  # noqa: BLE001
        reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        raise KdverifyError(f"{failure}; keeping the model at {rescue} failed too ({reason}): it is lost") from None
    raise KdverifyError(f"{failure}; the trained model was kept at {rescue}")


def _train_and_save(recipe_name: str, budget: str, out: str, force: bool, data_root: str | None, device: str,
                    seed: int | None, epochs: int | None, teacher_path: str | None, deterministic: bool) -> None:
    import dataclasses

    from kdverify.cache.checkpoint import load_checkpoint, state_digest
    from kdverify.cache.spec import resolve
    from kdverify.cache.store import trained_payload
    from kdverify.data import load_dataset
    from kdverify.io import check_writable
    from kdverify.train.cpu_memory import keep_freed_memory
    from kdverify.train.denormals import flush_denormals
    from kdverify.train.loop import fit

    _set_deterministic(deterministic)
    keep_freed_memory()  # this process is kdverify's own: reuse freed heap pages (see kdverify.train.cpu_memory)
    flush_denormals()  # and steady epochs, the same weights (see kdverify.train.denormals)
    dev = resolve_device(device)
    spec = resolve(recipe_name, budget, seed=seed)
    recipe = spec.recipe
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    if recipe.teacher and not teacher_path:
        raise KdverifyError(f"recipe {recipe.name} distils from a teacher: use "
                            f"`kdverify distill --teacher TEACHER.pt --recipe {recipe.name}`")
    if teacher_path and not recipe.teacher:
        raise KdverifyError(f"recipe {recipe.name} trains on hard labels and takes no teacher: use "
                            f"`kdverify train --recipe {recipe.name}`")
    out_path = check_writable(out, force)  # before hours of training, not after
    teacher = None
    if teacher_path:
        if Path(teacher_path).resolve() == out_path.resolve():
            raise KdverifyError(f"--out {out} is the teacher checkpoint itself; write the student elsewhere")
        ckpt = load_checkpoint(teacher_path, map_location=dev)
        expected = spec.teacher.recipe.arch if spec.teacher else None
        if expected and ckpt.arch != expected:
            raise KdverifyError(f"{teacher_path} is a {ckpt.arch}; recipe {recipe.name} needs a {expected} teacher")
        teacher_fits_student(ckpt, recipe, teacher_path)  # before any data is loaded or anything written
        teacher = ckpt.model.to(dev)
    dataset = load_dataset(recipe.dataset, data_root, dev)
    if teacher is not None:
        from kdverify.train.compat import check_distillation

        teacher_fits_student(ckpt, recipe, teacher_path, dataset)
        check_distillation(recipe, ckpt.arch, ckpt.arch_kwargs, tuple(dataset.test.images.shape[1:]),
                           len(dataset.classes), where=teacher_path)
    click.echo(f"training {recipe.name} ({budget} budget, {recipe.epochs} epochs) on {dataset.variant}, {dev}",
               err=True)
    result = fit(recipe, dataset, teacher=teacher)
    teacher_weights = (ckpt.weights_sha256 or state_digest(teacher)) if teacher is not None else None
    payload = trained_payload(result, recipe, dataset, recipe.fingerprint(), teacher_weights)
    _save_or_rescue(out_path, payload, force, recipe.name)
    ev = result.evaluation
    click.echo(f"wrote {out_path}: {recipe.name}, test errors {ev.errors}/{ev.total} "
               f"({100 * ev.error_rate:.2f}%), {result.seconds:.0f}s")


def teacher_fits_student(ckpt: Any, recipe: Any, teacher_path: str, dataset: Any = None) -> None:
    """A teacher must have learnt the student's task: the dataset its checkpoint names (checked before any data
    is loaded), then the classes and input shape of the data as loaded (before any training)."""
    if not ckpt.dataset:
        raise KdverifyError(f"{teacher_path} does not name the dataset it was trained on (written by an old "
                            "kdverify?): it cannot be checked as a teacher")
    if ckpt.dataset != recipe.dataset:
        raise KdverifyError(f"{teacher_path} was trained on {ckpt.dataset!r}; recipe {recipe.name} distils on "
                            f"{recipe.dataset!r}: the teacher must have learnt the student's data")
    if dataset is not None:
        from kdverify.cache.checkpoint import checkpoint_fits_data

        checkpoint_fits_data(ckpt, dataset, teacher_path)


def _training_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--recipe", "recipe_name", required=True, help="Recipe name (see `kdverify recipes`)."),
        recipe_file_option,
        budget_option,
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write."),
        click.option("--force", is_flag=True, help="Overwrite an existing output."),
        data_root_option, device_option,
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=None, help="Override the recipe's seed."),
        click.option("--epochs", type=click.IntRange(min=1, max=MAX_EPOCHS), default=None,
                     help="Override the recipe's epochs."),
        deterministic_option,
    ]):
        fn = option(fn)
    return fn


@main.command("train")
@_training_options
@_one_line_errors
def train_command(recipe_name: str, budget: str, out: str, force: bool, data_root: str | None, device: str,
                  seed: int | None, epochs: int | None, deterministic: bool) -> None:
    """Train a model from scratch on hard labels (teachers, baselines)."""
    _train_and_save(recipe_name, budget, out, force, data_root, device, seed, epochs, None, deterministic)


@main.command("distill")
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=False),
              help="Teacher checkpoint written by `kdverify train`.")
@_training_options
@_one_line_errors
def distill_command(teacher_path: str, recipe_name: str, budget: str, out: str, force: bool,
                    data_root: str | None, device: str, seed: int | None, epochs: int | None,
                    deterministic: bool) -> None:
    """Train a student from a teacher checkpoint (KD, cosine or hint objective)."""
    _train_and_save(recipe_name, budget, out, force, data_root, device, seed, epochs, teacher_path, deterministic)


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path())
@data_root_option
@device_option
@deterministic_option
@_one_line_errors
def evaluate_command(checkpoint: str, data_root: str | None, device: str, deterministic: bool) -> None:
    """Test errors, per-class errors and confusion matrix of a checkpoint on real data."""
    from kdverify.cache.checkpoint import checkpoint_fits_data, load_checkpoint
    from kdverify.data import load_dataset
    from kdverify.train.metrics import evaluate

    _set_deterministic(deterministic)
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    for problem in checkpoint_problems(ckpt):
        _warn(f"{checkpoint}: {problem}")
    if not ckpt.dataset:
        raise KdverifyError(f"{checkpoint} does not name the dataset it was trained on (written by an old kdverify?)")
    dataset = load_dataset(ckpt.dataset, data_root, dev)
    checkpoint_fits_data(ckpt, dataset, checkpoint)
    ev = evaluate(ckpt.model.to(dev), dataset.test, ckpt.mean, ckpt.std)
    click.echo(f"{checkpoint}: {ckpt.arch} on {dataset.variant}: {ev.errors}/{ev.total} errors "
               f"({100 * ev.error_rate:.2f}%)")
    click.echo("per class: " + "  ".join(f"{c}:{e}" for c, e in zip(dataset.classes, ev.per_class_errors)))
    click.echo("confusion matrix (rows: true class, columns: predicted class):")
    for row in confusion_lines(ev.confusion, dataset.classes):
        click.echo(row)


def checkpoint_problems(ckpt: Any) -> list[str]:
    """What makes a checkpoint's predictions meaningless though it loads: a zero or non-finite
    normalisation std (inputs become inf/NaN) or NaN/inf weights (a diverged run)."""
    problems = []
    std = torch.tensor([float(x) for x in ckpt.std], dtype=torch.float64)
    if not bool(torch.isfinite(std).all()) or bool((std == 0).any()):
        problems.append(f"normalisation std {list(ckpt.std)} contains zero or non-finite values")
    bad = [name for name, t in ckpt.model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        problems.append(f"{len(bad)} weight tensor(s) contain NaN or inf ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}): the run that wrote it probably diverged")
    return problems


def confusion_lines(confusion: torch.Tensor, classes: tuple[str, ...]) -> list[str]:
    """Rows true class, columns predicted, right-aligned; columns are headed by class index so ten
    CIFAR names still fit, rows name the class too when its name is not its index."""
    n = int(confusion.shape[0])
    names = list(classes) if len(classes) == n else [str(i) for i in range(n)]
    labels = [name if name == str(i) else f"{i} {name}" for i, name in enumerate(names)]
    left = max(len(x) for x in labels)
    cell = max(len(str(int(confusion.max()))) if confusion.numel() else 1, len(str(n - 1))) + 1
    lines = [" " * left + "".join(str(j).rjust(cell) for j in range(n))]
    for label, row in zip(labels, confusion.tolist()):
        lines.append(label.ljust(left) + "".join(str(v).rjust(cell) for v in row))
    return lines


@main.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", type=click.Path(), default=None,
              help="ONNX file to write (default: exports/<checkpoint stem>.onnx).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write an int8 model (<out stem>.int8.onnx), judged by test accuracy.")
@click.option("--batch-dynamic/--no-batch-dynamic", default=True, show_default=True,
              help="Dynamic batch axis, or a fixed batch of 1.")
@click.option("--atol", type=click.FloatRange(min=0.0, max=1.0), default=1e-4, show_default=True,
              callback=lambda ctx, param, value: _finite(ctx, param, value),
              help="Largest |logit difference| allowed between ONNX Runtime and PyTorch (0..1).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@data_root_option
@_one_line_errors
def export_command(checkpoint: str, out: str | None, opset: int | None, quantize: str | None, batch_dynamic: bool,
                   atol: float, force: bool, data_root: str | None) -> None:
    """Export a checkpoint to ONNX, validated against PyTorch before it is written."""
    from kdverify.export.onnx import DEFAULT_OPSET, export_checkpoint

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
    from kdverify.cache.checkpoint import load_checkpoint, machine_description
    from kdverify.cache.pinned import pin_teacher
    from kdverify.train.loop import TRAINER_VERSION
    from kdverify.train.recipes import PINNED_TEACHERS, get_recipe

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
@recipe_file_option
@_one_line_errors
def cache_add_command(checkpoint: str, budget: str, cache: str | None, data_root: str | None) -> None:
    """Adopt a model trained by `kdverify train` (e.g. a long teacher run) as the budget's cache entry."""
    from kdverify.cache.checkpoint import load_checkpoint
    from kdverify.cache.store import ModelCache
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
@click.option("--claims", "claims_ref", default="kdverify.claims.paper:CLAIMS", show_default=True,
              metavar="MODULE:NAME", help="The list of Claim objects to calibrate, e.g. your own (see --import).")
@recipe_file_option
@_one_line_errors
def calibrate_command(seeds: tuple[int, ...], budget: str, data_root: str | None, cache: str | None,
                      out: str | None, force: bool, claim_ids: tuple[str, ...], claims_ref: str) -> None:
    """Measure every claim at several seeds: values, and the worst seed's margin to its fixed threshold."""
    from kdverify.claims.calibrate import calibrate, claims_from
    from kdverify.io import check_writable

    if out:
        check_writable(out, force)  # before the hours of training, not after
    calibrate(seeds, budget, data_root, cache, Path(out) if out else None, claim_ids or None, force=force,
              claims=claims_from(claims_ref))


@main.command("reference")
@click.option("--seeds", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Seed offsets 0..N-1 of every student (teachers fixed).")
@budget_option
@data_root_option
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Model cache folder.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write (default: kdverify/references/<numeric path>.json).")
@click.option("--force", is_flag=True, help="Replace an existing reference file.")
@click.option("--claim", "claim_ids", multiple=True, help="Only these claim ids (repeatable).")
@click.option("--path", "path_label", default=None, metavar="NAME",
              help="Name this numeric path (default: device, kernels, threads and CPU maker, e.g. "
                   "cpu-avx512-2t-intel).")
@click.option("--cached-only", is_flag=True,
              help="Train nothing: each claim gets the seeds whose models the cache already holds (0, 1, ... up to the "
                   "first missing one).")
@recipe_file_option
@_one_line_errors
def reference_command(seeds: int, budget: str, data_root: str | None, cache: str | None, out: str | None,
                      force: bool, claim_ids: tuple[str, ...], path_label: str | None, cached_only: bool) -> None:
    """Write this numeric path's reference sample: every trained claim at N seeds, with provenance."""
    from kdverify.claims.calibrate import measure_reference

    if out:
        from kdverify.io import check_writable

        check_writable(out, force)
    path = measure_reference(seeds, budget, data_root, cache, Path(out) if out else None, force, claim_ids or None,
                             cached_only=cached_only, path=path_label)
    click.echo(f"wrote {path}")


@main.command("plan")
@budget_option
@click.option("--seeds", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Seed offsets 0..N-1 of every student, as pytest's --kd-seeds (teachers fixed).")
@click.option("--claim", "claim_ids", multiple=True, help="Only these claim ids (repeatable).")
@click.option("--claims", "claims_ref", default="kdverify.claims.paper:CLAIMS", show_default=True,
              metavar="MODULE:NAME", help="The list of Claim objects to plan for, e.g. your own (see --import).")
@data_root_option
@click.option("--cache", type=click.Path(file_okay=False), default=None, help="Model cache folder.")
@recipe_file_option
@_one_line_errors
def plan_command(budget: str, seeds: int, claim_ids: tuple[str, ...], claims_ref: str, data_root: str | None,
                 cache: str | None) -> None:
    """Every model a claims run needs, teachers first: cached or not, expected cost. Trains nothing."""
    from kdverify.claims.calibrate import claims_from
    from kdverify.claims.lab import ClaimsLab
    from kdverify.claims.plan import estimate_seconds, format_plan, make_plan

    claims = claims_from(claims_ref)
    unknown = sorted(set(claim_ids) - {c.id for c in claims})
    if unknown:
        raise KdverifyError(f"unknown claim id(s) {', '.join(unknown)}")
    chosen = [c for c in claims if not claim_ids or c.id in claim_ids]
    plan = make_plan(chosen, budget, seeds)
    ClaimsLab(data_root, budget, "auto", cache, progress=None).mark_cached(plan)
    estimate_seconds(plan)
    click.echo(format_plan(plan, budget, seeds))


if __name__ == "__main__":
    main()
