"""`kdverify export`: a checkpoint becomes an ONNX file that is proven to match it before it exists.

The fp32 graph is checked by `onnx.checker` and then run by ONNX Runtime, at batch sizes 1, 7
and 256 and at two graph-optimisation levels, against PyTorch on the same inputs (real test
images when the data is there). An int8 graph is judged by what matters for it, test accuracy.
Everything is written to temporary files beside the output and renamed into place only after
every check has passed, so a failed export leaves nothing behind.

Exporter: `torch.onnx.export(dynamo=True)` (torch.export + onnxscript), the path current
PyTorch recommends. For these four models it exports cleanly at opset 18 and above, with a
named dynamic batch axis, and matches PyTorch to ~1e-7. It does not honour opsets below 18:
onnxscript's version converter fails for them and the model silently stays at 18, so 18 is
the minimum accepted here and the stamped opset is checked after every export.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import kdverify
from kdverify.checkpoint import Checkpoint, load_checkpoint
from kdverify.data import Dataset, load_dataset, normalize
from kdverify.errors import KdverifyError

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's native opset; lower ones are not converted (see module docstring)
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx defines
INPUT_NAME, OUTPUT_NAME = "input", "logits"
VALIDATION_BATCHES = (1, 7, 256)
VALIDATION_LEVELS = ("basic", "all")  # ORT_ENABLE_BASIC and ORT_ENABLE_ALL
# int8 may cost at most this many percentage points of test error rate over the fp32 export.
INT8_MAX_EXTRA_ERROR_PP = 0.3
CALIBRATION_SIZE = 256
RANDOM_SEED = 0
EVAL_CHUNK = 256

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ExportError(KdverifyError):
    """An export that cannot be written or fails validation."""


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
    int8_errors: int | None = None
    dataset_variant: str | None = None  # the data validated on; None for random inputs
    int8_agreement: float | None = None  # int8 vs fp32 top-1 agreement when there was no real data


# ---------------------------------------------------------------- files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _temp_path(final: Path) -> Path:
    """An empty temp file beside `final` (same filesystem, so os.replace is atomic)."""
    try:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as exc:
        raise ExportError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600; the finished file gets ordinary permissions
    return Path(name)


@contextlib.contextmanager
def _temp_beside(final: Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; it is removed unless the caller renamed it."""
    tmp = _temp_path(final)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _save_atomic(proto: onnx.ModelProto, path: Path) -> None:
    with _temp_beside(path) as tmp:
        try:
            onnx.save_model(proto, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace or add `metadata_props` entries (read back via get_modelmeta().custom_metadata_map)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            proto.metadata_props.add(key=key, value=str(value))


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
                          f"(torch.onnx dynamo exporter, onnx {onnx.__version__})")


# ---------------------------------------------------------------- export and run


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantiser's progress prints, warnings and log notices."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx._internal.exporter._registration")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _to_proto(model: nn.Module, input_shape: tuple[int, ...], opset: int, batch_dynamic: bool) -> onnx.ModelProto:
    check_opset(opset)
    was_training = model.training
    model.eval()
    # A dynamic batch needs an example batch > 1: torch.export specialises sizes 0 and 1.
    example = torch.zeros(2 if batch_dynamic else 1, *input_shape)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if batch_dynamic else None
    try:
        with _quiet():
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic_shapes, external_data=False)
        proto = program.model_proto
    except Exception as exc:  # noqa: BLE001 - any exporter failure is one user-facing problem
        raise ExportError(f"torch.onnx.export (dynamo) failed at opset {opset}: {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    stamped = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if stamped != opset:
        raise ExportError(f"asked for opset {opset} but the exporter produced opset {stamped}")
    return proto


def export_model(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = DEFAULT_OPSET,
                 batch_dynamic: bool = True, metadata: dict[str, str] | None = None) -> None:
    """Raw fp32 export to a finished file (written atomically); no validation."""
    proto = _to_proto(model, tuple(input_shape), opset, batch_dynamic)
    set_metadata(proto, metadata or {})
    _save_atomic(proto, Path(path))


def ort_session(path: Path, threads: int = 1, optimization: str = "all") -> ort.InferenceSession:
    """CPU session with a fixed thread count and no spinning, so timings and shared CPUs stay honest."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"unknown optimization {optimization!r}; known: {', '.join(OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {Path(path).name}: {_first_line(exc)}") from None


def ort_logits(session: ort.InferenceSession, inputs: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Logits for `inputs` in chunks of `chunk` (1 for a fixed-batch graph)."""
    name = session.get_inputs()[0].name
    x = inputs.detach().cpu().numpy().astype(np.float32, copy=False)
    try:
        out = [session.run(None, {name: x[i:i + chunk]})[0] for i in range(0, len(x), chunk)]
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
    return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0)


# ---------------------------------------------------------------- int8


def int8_method(fp32_path: Path, calibration: torch.Tensor | None) -> str:
    """'static' (per-channel QDQ, calibrated) for conv models given calibration inputs, else 'dynamic'."""
    has_conv = any(node.op_type == "Conv" for node in onnx.load_model(fp32_path).graph.node)
    return "static" if has_conv and calibration is not None else "dynamic"


def _logit_layer(proto: onnx.ModelProto) -> list[str]:
    """Name of the Gemm/MatMul that produces the graph's output, if one does (kept in fp32)."""
    output = proto.graph.output[0].name
    return [n.name for n in proto.graph.node if output in n.output and n.op_type in ("Gemm", "MatMul") and n.name]


class _Calibration:
    """ORT's CalibrationDataReader protocol over a tensor of normalised inputs."""

    def __init__(self, inputs: torch.Tensor, graph_input: onnx.ValueInfoProto) -> None:
        batch = graph_input.type.tensor_type.shape.dim[0].dim_value or 32  # a fixed batch is fed as it is
        x = inputs.detach().cpu().numpy().astype(np.float32)
        self._batches = iter([{graph_input.name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: torch.Tensor | None = None) -> None:
    """int8 copy of an fp32 ONNX file, written atomically; metadata is kept, precision becomes int8.

    Chosen by measuring test errors (fp32 -> int8, 1-epoch models, this repo's recipes):
    MLPs get dynamic quantisation of the MatMul/Gemm weights (hinton_mlp 563 -> 556; activations
    quantised on the fly, no calibration). Dynamic quantisation leaves convolutions in fp32, so
    conv models with `calibration` inputs get static per-channel QDQ of Conv/Gemm/MatMul with
    - 7-bit weights (reduce_range): full 8-bit u8 x s8 saturates on AVX2 CPUs without VNNI
      (deep_nn 5567 -> 5677 errors, blog_cnn 179 -> 205; 5559 and 177 with reduce_range);
    - the logit layer kept in fp32 (light_nn 5708 -> 5729 with it quantised, 5708 without;
      deep_nn 5567 -> 5567, blog_cnn 179 -> 178), at +10 KB.
    Conv models without calibration fall back to dynamic MatMul/Gemm.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    source = onnx.load_model(fp32_path)
    method = int8_method(fp32_path, calibration)
    with _temp_beside(int8_path) as tmp:
        try:
            with _quiet():
                if method == "static":
                    quantize_static(source, tmp, _Calibration(calibration, source.graph.input[0]),
                                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                                    nodes_to_exclude=_logit_layer(source))
                else:
                    quantize_dynamic(source, tmp, op_types_to_quantize=["MatMul", "Gemm"],
                                     weight_type=QuantType.QInt8)
            proto = onnx.load_model(tmp)
        except Exception as exc:  # noqa: BLE001 - quantiser failures are one user-facing problem
            raise ExportError(f"int8 quantisation failed: {_first_line(exc)}") from None
        metadata = {p.key: p.value for p in source.metadata_props}
        set_metadata(proto, {**metadata, "precision": "int8", "int8_method": method})
        try:
            onnx.save_model(proto, tmp)
            os.replace(tmp, int8_path)
        except OSError as exc:
            raise ExportError(f"cannot write {int8_path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- validation


@dataclass
class Agreement:
    """How closely one set of logits follows another."""

    max_abs_diff: float
    agreement: float  # top-1, 0..1
    count: int

    @classmethod
    def of(cls, got: torch.Tensor, want: torch.Tensor) -> "Agreement":
        diff = float((got - want).abs().max()) if got.numel() else 0.0
        same = float((got.argmax(1) == want.argmax(1)).float().mean()) if len(got) else 1.0
        return cls(diff, same, len(got))


def validate_against_torch(model: nn.Module, path: Path, inputs: torch.Tensor, batches: Sequence[int],
                           atol: float) -> Agreement:
    """ONNX Runtime vs PyTorch on consecutive slices of `inputs`, one per batch size, at each ORT level.

    Raises ExportError unless max |logit difference| <= atol and top-1 agreement is 100%.
    """
    needed = sum(batches)
    if len(inputs) < needed:
        raise ValueError(f"validation needs {needed} inputs, got {len(inputs)}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want = model(inputs[:needed]).float()
    model.train(was_training)
    got: list[torch.Tensor] = []
    for level in VALIDATION_LEVELS:
        session = ort_session(path, optimization=level)
        start = 0
        for b in batches:
            got.append(ort_logits(session, inputs[start:start + b], chunk=b))
            start += b
    result = Agreement.of(torch.cat(got), want.repeat(len(VALIDATION_LEVELS), 1))
    if not result.max_abs_diff <= atol or result.agreement < 1.0:
        raise ExportError(f"{path.name} disagrees with PyTorch: max |logit difference| {result.max_abs_diff:.2e} "
                          f"(allowed {atol:.1e}), top-1 agreement {100 * result.agreement:.2f}% (required 100%)")
    return result


def check_graph(path: Path) -> None:
    """onnx.checker with full_check (strict shape inference), as a one-line ExportError."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape-inference errors alike
        raise ExportError(f"{path.name} fails onnx.checker: {_first_line(exc)}") from None


# ---------------------------------------------------------------- the command


def default_output(checkpoint: Path, int8: bool = False) -> Path:
    return Path("exports") / f"{checkpoint.stem}{'.int8' if int8 else ''}.onnx"


def _check_output(path: Path, force: bool, create_parent: bool) -> None:
    if path.is_dir():
        raise ExportError(f"output {path} is a directory")
    if path.exists() and not force:
        raise ExportError(f"{path} exists; pass --force to overwrite it")
    if create_parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as exc:
            raise ExportError(f"cannot create output folder {path.parent}: {exc.strerror or exc}") from None
    if not path.parent.is_dir():
        raise ExportError(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {path.parent} is not writable")
    _temp_path(path).unlink()  # the real test of writability (root, read-only mounts, /proc)


def _check_description(ckpt: Checkpoint, path: Path) -> None:
    """The fields export relies on, which an old or hand-made checkpoint may lack."""
    shape, channels = tuple(ckpt.input_shape), (tuple(ckpt.input_shape) or (0,))[0]
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(f"{path}: input shape {list(shape)} is not (channels, height, width)")
    if len(ckpt.mean) != channels or len(ckpt.std) != channels or not all(ckpt.std):
        raise ExportError(f"{path}: normalisation mean {list(ckpt.mean)} / std {list(ckpt.std)} "
                          f"does not fit {channels} input channel(s)")


def _dataset_name(ckpt: Checkpoint) -> str:
    return ckpt.recipe.get("dataset") or ("cifar10" if tuple(ckpt.input_shape)[:1] == (3,) else "mnist")


def _load_data(ckpt: Checkpoint, data_root: str | None, log: Callable[[str], None]) -> Dataset | None:
    """The checkpoint's dataset when the data root has it (and it fits the model), else None."""
    name = _dataset_name(ckpt)
    try:
        dataset = load_dataset(name, data_root)
    except (KdverifyError, OSError) as exc:
        log(f"no {name} data ({_first_line(exc).split(';')[0]}): validating on random inputs")
        return None
    if tuple(dataset.input_shape) != tuple(ckpt.input_shape):
        log(f"{dataset.variant} images are {tuple(dataset.input_shape)}, the model takes {tuple(ckpt.input_shape)}; "
            "validating on random inputs")
        return None
    return dataset


def _inputs(ckpt: Checkpoint, dataset: Dataset | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Normalised (validation probe, whole test split, calibration set); without data, seeded random images."""
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    if dataset is None:
        images = torch.randint(0, 256, (sum(VALIDATION_BATCHES), *ckpt.input_shape), generator=gen, dtype=torch.uint8)
        return normalize(images, ckpt.mean, ckpt.std), None, None
    test = normalize(dataset.test.images, ckpt.mean, ckpt.std)
    pick = torch.randperm(len(dataset.train), generator=gen)[:CALIBRATION_SIZE]
    return test[:sum(VALIDATION_BATCHES)], test, normalize(dataset.train.images[pick], ckpt.mean, ckpt.std)


def _metadata(ckpt: Checkpoint, precision: str, test_errors: dict | None) -> dict[str, str]:
    return {
        "architecture": ckpt.arch,
        "arch_kwargs": json.dumps(ckpt.arch_kwargs, sort_keys=True),
        "classes": json.dumps(list(ckpt.classes)),
        "input_shape": json.dumps(list(ckpt.input_shape)),
        "input": "float32 NCHW, (pixel / 255 - mean) / std per channel",
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


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def _errors(session: ort.InferenceSession, inputs: torch.Tensor, labels: torch.Tensor, chunk: int) -> int:
    return int((ort_logits(session, inputs, chunk).argmax(1) != labels).sum())


def _update_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Rewrite only metadata_props of an already validated file (the graph is untouched)."""
    proto = onnx.load_model(path)
    set_metadata(proto, metadata)
    onnx.save_model(proto, path)


def _validate_int8(report: ExportReport, fp32: Path, int8: Path, method: str, dataset: Dataset | None,
                   probe: torch.Tensor, test_inputs: torch.Tensor | None, chunk: int) -> str:
    """Judge the int8 file by test accuracy against the fp32 one; returns its summary line."""
    check_graph(int8)
    session = ort_session(int8)
    head = f"exported {report.int8_path}: {{size}}, int8 ({method} quantisation), "
    if dataset is None or test_inputs is None or report.errors is None:
        agree = Agreement.of(ort_logits(session, probe, chunk), ort_logits(ort_session(fp32), probe, chunk))
        report.int8_agreement = agree.agreement
        report.int8_size_bytes = int8.stat().st_size
        return (head.format(size=_size(report.int8_size_bytes)) + f"top-1 agreement with fp32 "
                f"{100 * agree.agreement:.2f}% on {agree.count} random inputs; accuracy not checked (no data)")
    total = len(dataset.test)
    report.int8_errors = _errors(session, test_inputs, dataset.test.labels, chunk)
    extra_pp = 100 * (report.int8_errors - report.errors) / total
    if extra_pp > INT8_MAX_EXTRA_ERROR_PP:
        raise ExportError(f"int8 model loses too much accuracy: {report.int8_errors}/{total} test errors vs "
                          f"{report.errors}/{total} in fp32 ({extra_pp:+.2f} pp, limit +{INT8_MAX_EXTRA_ERROR_PP} pp)")
    _update_metadata(int8, {"test_errors": json.dumps({
        "errors": report.int8_errors, "total": total, "dataset": dataset.variant,
        "measured_by": "onnxruntime (this file)"})})
    report.int8_size_bytes = int8.stat().st_size
    return (head.format(size=_size(report.int8_size_bytes)) + f"test errors fp32 {report.errors}/{total} vs int8 "
            f"{report.int8_errors}/{total} ({extra_pp:+.2f} pp, limit +{INT8_MAX_EXTRA_ERROR_PP:.2f} pp)")


def export_checkpoint(checkpoint: str | Path, out: Path | None = None, *, opset: int = DEFAULT_OPSET,
                      quantize: str | None = None, batch_dynamic: bool = True, atol: float = 1e-4,
                      force: bool = False, data_root: str | None = None,
                      log: Callable[[str], None] = print) -> ExportReport:
    """Export, validate and only then write a checkpoint's model (and its int8 copy); see the module docstring."""
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantisation {quantize!r}; known: int8")
    check_opset(opset)
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    _check_description(ckpt, checkpoint)
    path = Path(out) if out is not None else default_output(checkpoint)
    int8_path = None
    if quantize:
        int8_path = path.with_suffix(".int8.onnx") if out is not None else default_output(checkpoint, int8=True)
    for target in filter(None, (path, int8_path)):
        _check_output(target, force, create_parent=out is None)

    dataset = _load_data(ckpt, data_root, log)
    probe, test_inputs, calibration = _inputs(ckpt, dataset)
    batches = VALIDATION_BATCHES if batch_dynamic else (1,)
    chunk = EVAL_CHUNK if batch_dynamic else 1  # a fixed-batch graph takes one image per run
    source = dataset.variant + " test images" if dataset is not None else "random inputs"

    with contextlib.ExitStack() as stack:  # every temp file is removed on any failure
        tmp = stack.enter_context(_temp_beside(path))
        export_model(ckpt.model, ckpt.input_shape, tmp, opset, batch_dynamic,
                     _metadata(ckpt, "fp32", _recorded_errors(ckpt)))
        check_graph(tmp)
        agree = validate_against_torch(ckpt.model, tmp, probe, batches, atol)
        log(f"fp32 vs PyTorch on {agree.count // len(VALIDATION_LEVELS)} {source} at batch size "
            f"{', '.join(map(str, batches))}, ORT basic and all: max |logit difference| {agree.max_abs_diff:.2e} "
            f"(atol {atol:.0e}), top-1 agreement {100 * agree.agreement:.2f}%")
        report = ExportReport(path, 0, opset, agree.max_abs_diff, agree.agreement, None, None,
                              dataset_variant=dataset.variant if dataset is not None else None)
        if dataset is not None and test_inputs is not None:
            report.errors = _errors(ort_session(tmp), test_inputs, dataset.test.labels, chunk)
            report.total = len(dataset.test)
            _update_metadata(tmp, {"test_errors": json.dumps({
                "errors": report.errors, "total": report.total, "dataset": dataset.variant,
                "measured_by": "onnxruntime (this file)"})})
        report.size_bytes = tmp.stat().st_size
        int8_line = None
        if int8_path is not None:
            report.int8_path = int8_path
            tmp8 = stack.enter_context(_temp_beside(int8_path))
            method = int8_method(tmp, calibration)
            quantize_int8(tmp, tmp8, calibration)
            int8_line = _validate_int8(report, tmp, tmp8, method, dataset, probe, test_inputs, chunk)
            os.replace(tmp8, int8_path)
        os.replace(tmp, path)

    log(f"exported {path}: {_size(report.size_bytes)}, opset {opset}, fp32, max|Δ| {report.max_abs_diff:.1e}, "
        f"top-1 agreement {100 * report.agreement:.2f}%, " + (
            f"test errors {report.errors}/{report.total} ({report.dataset_variant})" if report.errors is not None
            else "test errors not measured (no data; validated on random inputs)"))
    if int8_line:
        log(int8_line)
    return report
