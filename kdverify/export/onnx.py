"""`kdverify export`: a checkpoint becomes an ONNX file that is proven to match it before it exists.

The fp32 graph is checked by `onnx.checker` and then run by ONNX Runtime against PyTorch on the
same inputs (real test images when the data is there): at batch sizes 1, 7 and 256 for a dynamic
batch axis, on as many images one at a time for a fixed batch of 1, at two graph-optimisation
levels (see `validate`). An int8 graph is judged by test accuracy (see `quantize`). All checks run
on the models in memory; the files are written, each to a temporary beside it and renamed into
place, only after every check has passed, so a failed export leaves nothing behind.

Data: corrupt data is an error, never a reason to validate on random inputs instead. Missing data
falls back to seeded random inputs only when the user did not ask for data (no `data_root`, no
$KDVERIFY_DATA); then test errors are not measured and the int8 accuracy gate cannot run, and the
log says so.

Exporter: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), the path current
PyTorch recommends. For these four models it exports cleanly at opset 18 and above, with a
named dynamic batch axis, and matches PyTorch to ~1e-7. It does not honour opsets below 18:
onnxscript's version converter fails for them and the model silently stays at 18, so 18 is
the minimum accepted here and the stamped opset is checked after every export.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import onnx
import torch
from torch import nn

import kdverify
from kdverify.cache.checkpoint import Checkpoint, load_checkpoint
from kdverify.data import Dataset, is_tabular, load_dataset, normalize, random_raw_inputs
from kdverify.errors import DataError, DataMissing, KdverifyError
from kdverify.export.quantize import (
    CALIBRATION_SIZE,
    INT8_MAX_EXTRA_ERROR_PP,
    agreement_with_fp32,
    gate_int8,
    quantize_proto,
)
from kdverify.export.torchlib import registry_built_once
from kdverify.export.validate import (
    EVAL_CHUNK,
    VALIDATION_IMAGES,
    VALIDATION_LEVELS,
    ExportError,
    check_graph,
    count_errors,
    describe_batches,
    first_line,
    ort_session,
    quiet,
    set_metadata,
    validate_against_torch,
    validation_batches,
)
from kdverify.io import atomic_write_bytes, check_writable, describe_os_error, temp_beside
from kdverify.paths import how_data_was_named

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's native opset; lower ones are not converted (see module docstring)
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx defines
INPUT_NAME, OUTPUT_NAME = "input", "logits"
RANDOM_SEED = 0

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportReport", "export_checkpoint", "export_model", "to_proto"]


@dataclass
class ExportReport:
    """What `export_checkpoint` wrote and measured (errors are None when no real data was available)."""

    path: Path
    size_bytes: int
    opset: int
    max_abs_diff: float
    agreement: float  # top-1 agreement of ONNX Runtime with PyTorch, 0..1
    errors: int | None  # fp32 ONNX test errors on `dataset_variant`
    total: int | None
    int8_path: Path | None = None
    int8_size_bytes: int | None = None
    int8_errors: int | None = None  # set only when the int8 accuracy gate ran (and passed)
    dataset_variant: str | None = None  # the data validated on; None for random inputs
    int8_agreement: float | None = None  # int8 vs fp32 top-1 agreement when there was no real data
    validated_images: int = 0  # distinct inputs ONNX Runtime was compared with PyTorch on
    validation_batches: str = ""  # how they were fed, e.g. 'at batch sizes 1, 7 and 256'


# ---------------------------------------------------------------- the fp32 graph


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
                          f"(torch.onnx dynamo exporter, onnx {onnx.__version__})")


def to_proto(model: nn.Module, input_shape: tuple[int, ...], opset: int, batch_dynamic: bool) -> onnx.ModelProto:
    """The fp32 graph in memory, with the stamped opset checked (the exporter may ignore the one asked for)."""
    check_opset(opset)
    was_training = model.training
    model.eval()
    # A dynamic batch needs an example batch > 1: torch.export specialises sizes 0 and 1.
    example = torch.zeros(2 if batch_dynamic else 1, *input_shape)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if batch_dynamic else None
    try:
        with quiet("torch.onnx._internal.exporter._registration"), registry_built_once():
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic_shapes, external_data=False)
        proto = program.model_proto
    except Exception as exc:  # noqa: BLE001 - any exporter failure is one user-facing problem
        raise ExportError(f"torch.onnx.export (dynamo) failed at opset {opset}: {first_line(exc)}") from None
    finally:
        model.train(was_training)
    stamped = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if stamped != opset:
        raise ExportError(f"asked for opset {opset} but the exporter produced opset {stamped}")
    return proto


def export_model(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = DEFAULT_OPSET,
                 batch_dynamic: bool = True, metadata: dict[str, str] | None = None) -> None:
    """Raw fp32 export to a finished file (written atomically); no validation."""
    proto = to_proto(model, tuple(input_shape), opset, batch_dynamic)
    set_metadata(proto, metadata or {})
    try:
        atomic_write_bytes(path, proto.SerializeToString())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {describe_os_error(exc)}") from None


# ---------------------------------------------------------------- outputs


def default_output(checkpoint: Path, int8: bool = False) -> Path:
    return Path("exports") / f"{checkpoint.stem}{'.int8' if int8 else ''}.onnx"


def _same_file(target: Path, existing: Path) -> bool:
    """Whether writing `target` would replace `existing` (same path after `..` and links, or a hard link)."""
    with contextlib.suppress(OSError):
        if existing.exists() and (target.resolve() == existing.resolve()
                                  or (target.exists() and os.path.samefile(target, existing))):
            return True
    return False


def _refuse_source(checkpoint: Path, targets: list[Path]) -> None:
    """--force replaces old exports, never the checkpoint being exported (also through a link)."""
    for target in targets:
        if _same_file(target, checkpoint):
            raise ExportError(f"refusing to write {target}: it is the checkpoint {checkpoint} being exported "
                              "(even with --force); choose another --out")


def _check_output(path: Path, force: bool, create_parent: bool) -> None:
    """Every reason the write could fail, before any work is done."""
    if create_parent and not path.parent.exists():
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise ExportError(f"cannot create output folder {path.parent}: {ancestor} is not a writable folder")
        return  # made when the files are written: an export that fails leaves no empty folder behind
    if path.parent.is_dir() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {path.parent} is not writable")
    try:
        check_writable(path, force)  # includes a real temp file: root, read-only mounts, /proc
    except KdverifyError as exc:
        raise ExportError(str(exc)) from None


def _write_all(files: dict[Path, bytes]) -> None:
    """All files or none: each is written and fsynced beside its destination, then all are renamed."""
    current = next(iter(files))
    try:
        with contextlib.ExitStack() as stack:  # removes every temporary on any failure
            staged = []
            for current, payload in files.items():
                tmp = stack.enter_context(temp_beside(current))
                with open(tmp, "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                staged.append((tmp, current))
            for tmp, current in staged:
                os.replace(tmp, current)
    except OSError as exc:
        raise ExportError(f"cannot write {current}: {describe_os_error(exc)}") from None


# ---------------------------------------------------------------- inputs


def _check_description(ckpt: Checkpoint, path: Path) -> None:
    """The fields export relies on, which an old or hand-made checkpoint may lack."""
    shape, channels = tuple(ckpt.input_shape), (tuple(ckpt.input_shape) or (0,))[0]
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ExportError(f"{path}: input shape {list(shape)} is not (channels, height, width) or (features,)")
    if len(ckpt.mean) != channels or len(ckpt.std) != channels or not all(ckpt.std):
        what = "feature(s)" if is_tabular(shape) else "input channel(s)"
        raise ExportError(f"{path}: normalisation mean {list(ckpt.mean)[:8]} / std {list(ckpt.std)[:8]} "
                          f"does not fit {channels} {what}")


def _dataset_name(ckpt: Checkpoint) -> str:
    """The dataset the checkpoint says it was trained on: recorded, never guessed from its shape."""
    if not ckpt.dataset:
        raise ExportError("the checkpoint does not name the dataset it was trained on (written by an old kdverify?)")
    return ckpt.dataset


def _asked_for_data(data_root: str | None) -> str | None:
    """How the user asked for data ('--data-root', '$KDVERIFY_DATA'), or None when they did not."""
    return how_data_was_named(data_root)


def _load_data(ckpt: Checkpoint, data_root: str | None, int8: bool, log: Callable[[str], None]) -> Dataset | None:
    """The checkpoint's dataset; None (random inputs) only when it is missing and was not asked for."""
    name = _dataset_name(ckpt)
    try:
        dataset = load_dataset(name, data_root)
    except DataMissing as exc:
        asked = _asked_for_data(data_root)
        if asked:
            raise ExportError(f"{first_line(exc)} ({asked} is set, so export does not fall back to "
                              "random inputs)") from None
        log(f"NO REAL DATA USED: {first_line(exc).split(';')[0]}. Validating on {VALIDATION_IMAGES} seeded random "
            "inputs; test errors are not measured" + ("; the int8 accuracy gate cannot run" if int8 else ""))
        return None
    except DataError as exc:  # DataCorrupt, or anything the loader could not classify: never skip the checks
        raise ExportError(f"{first_line(exc)} (export does not validate on random inputs instead of "
                          "unusable data)") from None
    except OSError as exc:
        raise ExportError(f"cannot read {name} data: {describe_os_error(exc)}") from None
    if tuple(dataset.input_shape) != tuple(ckpt.input_shape) or len(dataset.classes) != len(ckpt.classes):
        raise ExportError(f"{dataset.variant} images are {tuple(dataset.input_shape)} in {len(dataset.classes)} "
                          f"classes, but the model takes {tuple(ckpt.input_shape)} and has {len(ckpt.classes)}: the "
                          "checkpoint does not fit its own dataset")
    return dataset


class _Inputs(NamedTuple):
    """Normalised model inputs for one export."""

    probe: torch.Tensor  # compared between ONNX Runtime and PyTorch
    test: torch.Tensor | None  # the whole test split (None without data)
    calibration: torch.Tensor | None  # training images for static int8 (None without data)


def _inputs(ckpt: Checkpoint, dataset: Dataset | None) -> _Inputs:
    """Real test and training images; without data, seeded random images and nothing else."""
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    if dataset is None:
        images = random_raw_inputs(VALIDATION_IMAGES, ckpt.input_shape, ckpt.mean, ckpt.std, gen)
        return _Inputs(normalize(images, ckpt.mean, ckpt.std), None, None)
    test = normalize(dataset.test.images, ckpt.mean, ckpt.std)
    pick = torch.randperm(len(dataset.train), generator=gen)[:CALIBRATION_SIZE]
    return _Inputs(test[:VALIDATION_IMAGES], test, normalize(dataset.train.images[pick], ckpt.mean, ckpt.std))


# ---------------------------------------------------------------- metadata and lines


def _metadata(ckpt: Checkpoint, precision: str, test_errors: dict | None) -> dict[str, str]:
    return {
        "architecture": ckpt.arch,
        "arch_kwargs": json.dumps(ckpt.arch_kwargs, sort_keys=True),
        "classes": json.dumps(list(ckpt.classes)),
        "input_shape": json.dumps(list(ckpt.input_shape)),
        "input": ("float32 (batch, D), (feature - mean) / std per feature" if is_tabular(ckpt.input_shape)
                  else "float32 NCHW, (pixel / 255 - mean) / std per channel"),
        "mean": json.dumps(list(ckpt.mean)),
        "std": json.dumps(list(ckpt.std)),
        "source_sha256": ckpt.sha256,
        "recipe": str(ckpt.recipe.get("name", "")),
        "dataset_variant": ckpt.dataset_variant,
        "test_errors": json.dumps(test_errors) if test_errors else "",
        "kdverify_version": kdverify.__version__,
        "precision": precision,
    }


def _recorded_errors(ckpt: Checkpoint) -> dict | None:
    """Test errors the checkpoint recorded at training time, if any."""
    test = ckpt.metrics.get("test") if isinstance(ckpt.metrics.get("test"), dict) else None
    if not test or "errors" not in test:
        return None
    return {"errors": test["errors"], "total": test.get("total"), "dataset": ckpt.dataset_variant,
            "measured_by": "checkpoint (PyTorch, at training time)"}


def _measured(errors: int, total: int, dataset: Dataset) -> dict[str, str]:
    return {"test_errors": json.dumps({"errors": errors, "total": total, "dataset": dataset.variant,
                                       "measured_by": "onnxruntime (this file)"})}


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


# ---------------------------------------------------------------- the command


def export_checkpoint(checkpoint: str | Path, out: Path | None = None, *, opset: int = DEFAULT_OPSET,
                      quantize: str | None = None, batch_dynamic: bool = True, atol: float = 1e-4,
                      force: bool = False, data_root: str | None = None,
                      log: Callable[[str], None] = print) -> ExportReport:
    """Export, validate and only then write a checkpoint's model (and its int8 copy); see the module docstring."""
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantisation {quantize!r}; known: int8")
    check_opset(opset)
    checkpoint = Path(checkpoint)
    path = Path(out) if out is not None else default_output(checkpoint)
    int8_path = None
    if quantize:
        int8_path = path.with_suffix(".int8.onnx") if out is not None else default_output(checkpoint, int8=True)
    targets = [t for t in (path, int8_path) if t is not None]
    _refuse_source(checkpoint, targets)
    ckpt = load_checkpoint(checkpoint)
    _check_description(ckpt, checkpoint)
    for target in targets:
        _check_output(target, force, create_parent=out is None)

    dataset = _load_data(ckpt, data_root, int8_path is not None, log)
    inputs = _inputs(ckpt, dataset)
    batches = validation_batches(batch_dynamic)
    chunk = EVAL_CHUNK if batch_dynamic else 1  # a fixed-batch graph takes one image per run
    source = dataset.variant + " test images" if dataset is not None else "random inputs"

    proto = to_proto(ckpt.model, tuple(ckpt.input_shape), opset, batch_dynamic)
    set_metadata(proto, _metadata(ckpt, "fp32", _recorded_errors(ckpt)))
    check_graph(proto, path.name)
    fp32 = proto.SerializeToString()
    agree = validate_against_torch(ckpt.model, fp32, inputs.probe, batches, atol, name=path.name)
    how = describe_batches(batches)
    log(f"fp32 vs PyTorch on {agree.count} {source} {how}, ORT {' and '.join(VALIDATION_LEVELS)}: "
        f"max |logit difference| {agree.max_abs_diff:.2e} (atol {atol:.0e}), "
        f"top-1 agreement {100 * agree.agreement:.2f}%")
    report = ExportReport(path, 0, opset, agree.max_abs_diff, agree.agreement, None, None,
                          dataset_variant=dataset.variant if dataset is not None else None,
                          validated_images=agree.count, validation_batches=how)
    if dataset is not None and inputs.test is not None:
        report.total = len(dataset.test)
        report.errors = count_errors(ort_session(fp32, name=path.name), inputs.test, dataset.test.labels, chunk,
                                     path.name)
        set_metadata(proto, _measured(report.errors, report.total, dataset))
    files = {path: proto.SerializeToString()}

    int8_line = None
    if int8_path is not None:
        files[int8_path], int8_line = _int8(report, int8_path, proto, fp32, inputs, dataset, chunk)

    _write_all(files)
    report.size_bytes = len(files[path])
    log(f"exported {path}: {_size(report.size_bytes)}, opset {opset}, fp32, "
        f"{'dynamic batch' if batch_dynamic else 'fixed batch 1'}, max|Δ| {report.max_abs_diff:.1e}, "
        f"top-1 agreement {100 * report.agreement:.2f}% on {report.validated_images} {source}, " + (
            f"test errors {report.errors}/{report.total} ({report.dataset_variant})" if report.errors is not None
            else "test errors not measured (no real data)"))
    if int8_line:
        log(int8_line)
    return report


def _int8(report: ExportReport, int8_path: Path, proto: onnx.ModelProto, fp32: bytes, inputs: _Inputs,
          dataset: Dataset | None, chunk: int) -> tuple[bytes, str]:
    """The int8 file's bytes and summary line: judged by test accuracy against fp32, or, without data,
    with a plain statement that it could not be."""
    int8_proto, method = quantize_proto(proto, inputs.calibration)
    check_graph(int8_proto, int8_path.name)
    int8 = int8_proto.SerializeToString()
    report.int8_path = int8_path
    head = f"exported {int8_path}: {{size}}, int8 ({method} quantisation), "
    if dataset is None or inputs.test is None or report.errors is None:
        agree = agreement_with_fp32(int8, fp32, inputs.probe, chunk, int8_path.name)
        report.int8_agreement = agree.agreement
        set_metadata(int8_proto, {"test_errors": ""})  # fp32's numbers say nothing about this file
        int8 = int8_proto.SerializeToString()
        tail = (f"int8 accuracy gate NOT run (no real data): top-1 agreement with fp32 {100 * agree.agreement:.2f}% "
                f"on {agree.count} random inputs")
    else:
        gate = gate_int8(int8, inputs.test, dataset.test.labels, report.errors, chunk, int8_path.name)
        report.int8_errors = gate.errors
        set_metadata(int8_proto, _measured(gate.errors, gate.total, dataset))
        int8 = int8_proto.SerializeToString()
        tail = (f"test errors fp32 {gate.fp32_errors}/{gate.total} vs int8 {gate.errors}/{gate.total} "
                f"({gate.extra_pp:+.2f} pp, limit +{INT8_MAX_EXTRA_ERROR_PP:.2f} pp)")
    report.int8_size_bytes = len(int8)
    return int8, head.format(size=_size(report.int8_size_bytes)) + tail
