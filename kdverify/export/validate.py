"""ONNX Runtime sessions and the checks an exported graph must pass before it is written.

Checks run on the serialized model in memory, never on a file, so a failure has nothing to clean
up and every message names the destination the user asked for, not a temporary. This module is
the base of the export modules: `quantize` and `export` import from it, never the reverse, so the
error type and the few helpers all three need live here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from kdverify.errors import KdverifyError, first_line

VALIDATION_BATCHES = (1, 7, 256)  # a dynamic-batch graph is checked at each of these sizes
VALIDATION_IMAGES = sum(VALIDATION_BATCHES)  # a fixed-batch graph is checked on as many images, one at a time
VALIDATION_LEVELS = ("basic", "all")  # ORT_ENABLE_BASIC and ORT_ENABLE_ALL
EVAL_CHUNK = 256

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# ---------------------------------------------------------------- shared by export and quantize


class ExportError(KdverifyError):
    """An export that cannot be written or fails validation."""


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence progress prints, warnings and log notices of the exporter and the quantiser."""
    logs = [logging.getLogger(), *map(logging.getLogger, loggers)]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace or add `metadata_props` entries (read back via get_modelmeta().custom_metadata_map)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            proto.metadata_props.add(key=key, value=str(value))


def _shown(model: Path | str | bytes, name: str | None) -> str:
    return name or (Path(model).name if isinstance(model, (str, Path)) else "the ONNX model")


# ---------------------------------------------------------------- ONNX Runtime


def ort_session(model: Path | str | bytes, threads: int = 1, optimization: str = "all",
                name: str | None = None) -> ort.InferenceSession:
    """CPU session with a fixed thread count and no spinning, so timings and shared CPUs stay honest.

    `model` is a file or a serialized model; `name` is what error messages call it.
    """
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
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {_shown(model, name)}: "
                          f"{first_line(exc)}") from None


def ort_logits(session: ort.InferenceSession, inputs: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Logits for `inputs` in chunks of `chunk` (1 for a fixed-batch graph)."""
    name = session.get_inputs()[0].name
    x = inputs.detach().cpu().numpy().astype(np.float32, copy=False)
    try:
        out = [session.run(None, {name: x[i:i + chunk]})[0] for i in range(0, len(x), chunk)]
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
    return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0)


# ---------------------------------------------------------------- checks


@dataclass
class Agreement:
    """How closely one set of logits follows another."""

    max_abs_diff: float
    agreement: float  # top-1, 0..1
    count: int  # inputs compared

    @classmethod
    def of(cls, got: torch.Tensor, want: torch.Tensor) -> "Agreement":
        diff = float((got - want).abs().max()) if got.numel() else 0.0
        same = float((got.argmax(1) == want.argmax(1)).float().mean()) if len(got) else 1.0
        return cls(diff, same, len(got))


def check_finite(logits: torch.Tensor, runtime: str, name: str) -> None:
    """NaN or inf logits make every comparison meaningless (NaN == NaN argmax "agrees"): refuse them."""
    bad = ~torch.isfinite(logits).reshape(len(logits), -1).all(1)
    if bool(bad.any()):
        raise ExportError(f"{name}: the model outputs non-finite values (NaN or inf) under {runtime} "
                          f"for {int(bad.sum())} of {len(logits)} inputs")


def check_graph(model: onnx.ModelProto, name: str) -> None:
    """onnx.checker with full_check (strict shape inference), as a one-line ExportError."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape-inference errors alike
        raise ExportError(f"{name} fails onnx.checker: {first_line(exc)}") from None


def validation_batches(batch_dynamic: bool) -> tuple[int, ...]:
    """Batch sizes to check: 1, 7 and 256 for a dynamic axis; as many single images for a fixed batch of 1."""
    return VALIDATION_BATCHES if batch_dynamic else (1,) * VALIDATION_IMAGES


def describe_batches(batches: Sequence[int]) -> str:
    """'at batch sizes 1, 7 and 256' or 'one at a time (fixed batch 1)', for logs."""
    sizes = sorted(set(batches))
    if sizes == [1] and len(batches) > 1:
        return "one at a time (fixed batch 1)"
    if len(sizes) == 1:
        return f"at batch size {sizes[0]}"
    return f"at batch sizes {', '.join(map(str, sizes[:-1]))} and {sizes[-1]}"


def validate_against_torch(model: nn.Module, onnx_model: Path | str | bytes, inputs: torch.Tensor,
                           batches: Sequence[int], atol: float, name: str | None = None) -> Agreement:
    """ONNX Runtime vs PyTorch on consecutive slices of `inputs`, one per batch size, at each ORT level.

    Raises ExportError unless every output is finite, max |logit difference| <= atol and top-1
    agreement is 100%. The returned count is the number of distinct inputs checked (fewer inputs than the batch
    sizes add up to are used again to fill them).
    """
    name = _shown(onnx_model, name)
    needed = sum(batches)
    if not len(inputs):
        raise ValueError("validation needs inputs, got none")
    distinct = min(len(inputs), needed)
    if len(inputs) < needed:  # a small test split (a user's dataset): its inputs again, so every batch size is run
        inputs = inputs.repeat(-(-needed // len(inputs)), *([1] * (inputs.dim() - 1)))[:needed]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(inputs[:needed]).float()
    finally:
        model.train(was_training)
    check_finite(want, "PyTorch", name)
    results = []
    for level in VALIDATION_LEVELS:
        session = ort_session(onnx_model, optimization=level, name=name)
        starts = np.cumsum((0, *batches[:-1]))
        got = torch.cat([ort_logits(session, inputs[s:s + b], chunk=b) for s, b in zip(starts, batches)])
        check_finite(got, f"ONNX Runtime ({level})", name)
        results.append(Agreement.of(got, want))
    result = Agreement(max(r.max_abs_diff for r in results), min(r.agreement for r in results), distinct)
    if not result.max_abs_diff <= atol or result.agreement < 1.0:
        raise ExportError(f"{name} disagrees with PyTorch: max |logit difference| {result.max_abs_diff:.2e} "
                          f"(allowed {atol:.1e}), top-1 agreement {100 * result.agreement:.2f}% (required 100%)")
    return result


def count_errors(session: ort.InferenceSession, inputs: torch.Tensor, labels: torch.Tensor, chunk: int,
                 name: str) -> int:
    """Test errors of an ONNX Runtime session (non-finite logits are an ExportError, not a wrong guess)."""
    logits = ort_logits(session, inputs, chunk)
    check_finite(logits, "ONNX Runtime", name)
    return int((logits.argmax(1) != labels.cpu()).sum())
