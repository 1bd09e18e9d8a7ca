"""int8 copies of fp32 ONNX graphs, and the accuracy gate that decides whether one may ship.

An int8 graph cannot match fp32 logits to 1e-4, so it is judged by what matters for it: test
errors on real data may rise by at most INT8_MAX_EXTRA_ERROR_PP percentage points. Without real
data the gate cannot run; the caller must say so, and only ever when the user did not ask for data.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from kdverify.export.validate import (
    Agreement,
    ExportError,
    check_finite,
    count_errors,
    first_line,
    ort_logits,
    ort_session,
    quiet,
    set_metadata,
)
from kdverify.io import atomic_write_bytes, describe_os_error

# int8 may cost at most this many percentage points of test error rate over the fp32 export.
INT8_MAX_EXTRA_ERROR_PP = 0.3
CALIBRATION_SIZE = 256  # training images that calibrate static quantisation


def _proto(model: Path | str | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load_model(model)


def int8_method(fp32: Path | str | onnx.ModelProto, calibration: torch.Tensor | None) -> str:
    """'static' (per-channel QDQ, calibrated) for conv models given calibration inputs, else 'dynamic'."""
    has_conv = any(node.op_type == "Conv" for node in _proto(fp32).graph.node)
    return "static" if has_conv and calibration is not None else "dynamic"


def _grouped_convs(proto: onnx.ModelProto) -> list[str]:
    """Names of the grouped (depthwise) convolutions, kept in fp32: a few weights each, and the most error."""
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


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


def quantize_proto(fp32: onnx.ModelProto, calibration: torch.Tensor | None = None) -> tuple[onnx.ModelProto, str]:
    """The int8 graph (metadata kept, precision 'int8') and the method used; nothing is written.

    Chosen by measuring test errors (fp32 -> int8, 1-epoch models, this repo's recipes):
    MLPs get dynamic quantisation of the MatMul/Gemm weights (hinton_mlp 563 -> 556; activations
    quantised on the fly, no calibration). Dynamic quantisation leaves convolutions in fp32, so
    conv models with `calibration` inputs get static per-channel QDQ of Conv/Gemm/MatMul with
    - 7-bit weights (reduce_range): full 8-bit u8 x s8 saturates on AVX2 CPUs without VNNI
      (deep_nn 5567 -> 5677 errors, blog_cnn 179 -> 205; 5559 and 177 with reduce_range);
    - the logit layer kept in fp32 (light_nn 5708 -> 5729 with it quantised, 5708 without;
      deep_nn 5567 -> 5567, blog_cnn 179 -> 178), at +10 KB;
    - grouped (depthwise) convolutions kept in fp32: the tinyshapes example's dw_cnn student (4343 fp32
      errors of 10,000) got 4374 (+0.31 pp, refused by the gate) with them quantised on an AVX2 AMD EPYC,
      4328 without, and its file is 2 KB smaller (a QDQ pair costs more than 9 weights a channel save).
      More calibration images helped less (1024: 4359); percentile and entropy calibration did not (4389, 4374).
    Conv models without calibration fall back to dynamic MatMul/Gemm.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    source = onnx.ModelProto()
    source.CopyFrom(fp32)  # the quantisers may annotate their input; the caller's graph stays as it was
    method = int8_method(source, calibration)
    # The quantisers write only to a path; a private folder, since the file is read straight back.
    with tempfile.TemporaryDirectory(prefix="kdverify-int8-") as folder:
        out = Path(folder) / "int8.onnx"
        try:
            with quiet():
                if method == "static":
                    quantize_static(source, out, _Calibration(calibration, source.graph.input[0]),
                                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                                    nodes_to_exclude=_logit_layer(source) + _grouped_convs(source))
                else:
                    quantize_dynamic(source, out, op_types_to_quantize=["MatMul", "Gemm"],
                                     weight_type=QuantType.QInt8)
            proto = onnx.load_model(out)
        except OSError as exc:
            raise ExportError(f"int8 quantisation failed: {describe_os_error(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - quantiser failures are one user-facing problem
            raise ExportError(f"int8 quantisation failed: {first_line(exc).replace(folder, '<temporary>')}") from None
    metadata = {p.key: p.value for p in fp32.metadata_props}
    set_metadata(proto, {**metadata, "precision": "int8", "int8_method": method})
    return proto, method


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: torch.Tensor | None = None) -> None:
    """int8 copy of an fp32 ONNX file, written atomically; no accuracy check (see `quantize_proto`)."""
    proto, _ = quantize_proto(onnx.load_model(fp32_path), calibration)
    try:
        atomic_write_bytes(int8_path, proto.SerializeToString())
    except OSError as exc:
        raise ExportError(f"cannot write {int8_path}: {describe_os_error(exc)}") from None


# ---------------------------------------------------------------- the gate


@dataclass
class Int8Gate:
    """The int8 model's test errors against fp32's, on the same labelled test images."""

    errors: int
    fp32_errors: int
    total: int

    @property
    def extra_pp(self) -> float:
        return 100 * (self.errors - self.fp32_errors) / self.total


def gate_int8(int8: bytes, inputs: torch.Tensor, labels: torch.Tensor, fp32_errors: int, chunk: int,
              name: str) -> Int8Gate:
    """Count the int8 model's test errors; an ExportError when they exceed fp32's by more than the limit."""
    gate = Int8Gate(count_errors(ort_session(int8, name=name), inputs, labels, chunk, name), fp32_errors, len(labels))
    if gate.extra_pp > INT8_MAX_EXTRA_ERROR_PP:
        raise ExportError(f"int8 model loses too much accuracy: {gate.errors}/{gate.total} test errors vs "
                          f"{gate.fp32_errors}/{gate.total} in fp32 ({gate.extra_pp:+.2f} pp, "
                          f"limit +{INT8_MAX_EXTRA_ERROR_PP} pp)")
    return gate


def agreement_with_fp32(int8: bytes, fp32: bytes, inputs: torch.Tensor, chunk: int, name: str) -> Agreement:
    """Top-1 agreement of int8 with fp32 when there are no labels: informative only, not a gate."""
    got = ort_logits(ort_session(int8, name=name), inputs, chunk)
    check_finite(got, "ONNX Runtime (int8)", name)
    return Agreement.of(got, ort_logits(ort_session(fp32, name=name), inputs, chunk))
