"""The benchmarked models with their inputs, ONNX files and ONNX Runtime sessions, made once per session.

None of this is timed: loading, export, quantisation and any test-error measurement happen
before the first `benchmark.pedantic` call that needs them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._pairs import Model, Pair
from benchmarks._support import Settings


def random_inputs(entry: Model, batch: int, seed: int = 0) -> torch.Tensor:
    """Normalised random inputs of the model's shape (what a deployed model is fed): pixels, or tabular features."""
    from kdverify.data import normalize, random_raw_inputs

    gen = torch.Generator().manual_seed(seed)
    images = random_raw_inputs(batch, entry.input_shape, entry.mean, entry.std, gen)
    return normalize(images, entry.mean, entry.std).contiguous()


def measure_test_errors(entry: Model, data_root: str | None) -> None:
    """Test errors of a trained model whose checkpoint records none, on its own dataset if that is here."""
    from kdverify.data import load_dataset
    from kdverify.errors import DataError, DataMissing
    from kdverify.export.validate import first_line
    from kdverify.train.metrics import evaluate

    if not entry.trained or entry.test_errors is not None:
        return
    if not entry.dataset:
        entry.test_note = "not measured: the checkpoint names no dataset"
        return
    try:
        data = load_dataset(entry.dataset, data_root)
    except DataMissing as exc:  # the part after ";" is the CLI's advice (--data-root)
        entry.test_note = f"not measured: {first_line(exc).split(';')[0]} (--kd-data-root or $KDVERIFY_DATA)"
        return
    except (DataError, OSError) as exc:  # corrupt or unreadable: said in the summary, never replaced by other data
        entry.test_note = f"not measured: {first_line(exc)}"
        return
    if tuple(data.input_shape) != entry.input_shape:
        entry.test_note = f"not measured: {data.variant} images are {tuple(data.input_shape)}, not {entry.input_shape}"
        return
    result = evaluate(entry.model, data.test, entry.mean, entry.std)
    entry.test_errors, entry.test_total = result.errors, result.total
    entry.test_note = f"measured here on the {data.variant} test split (PyTorch)"


class Zoo:
    """Models of the session's pairs (loaded on first use), their ONNX files, ORT sessions and inputs."""

    def __init__(self, settings: Settings, workdir: Path, pairs: list[Pair]) -> None:
        self.settings, self.workdir = settings, workdir
        self.pairs = {p.name: p for p in pairs}
        self._loaded: dict[str, tuple[Model, Model]] = {}
        self._sessions: dict[tuple[str, str], Any] = {}
        self._inputs: dict[tuple[str, int], torch.Tensor] = {}
        self.export_seconds = 0.0

    def models(self) -> list[Model]:
        return [m for pair in self._loaded.values() for m in pair]

    def model(self, pair: str, role: str) -> Model:
        if pair not in self._loaded:
            self._loaded[pair] = self.pairs[pair].load()
            for entry in self._loaded[pair]:
                measure_test_errors(entry, self.settings.data_root)
        return self._loaded[pair][0 if role == "teacher" else 1]

    def onnx_path(self, entry: Model, precision: str) -> Path:
        """fp32: kdverify.export.onnx.export_model; int8: kdverify.export.quantize.quantize_int8 of the fp32 file."""
        from kdverify.export.onnx import export_model
        from kdverify.export.quantize import CALIBRATION_SIZE, int8_method, quantize_int8

        if precision in entry.onnx:
            return entry.onnx[precision]
        t0 = time.perf_counter()
        if "fp32" not in entry.onnx:
            path = self.workdir / f"{entry.key}.onnx"
            export_model(entry.model, entry.input_shape, path,
                         metadata={"source": entry.weights, "purpose": "kdverify benchmarks"})
            entry.onnx["fp32"] = path
        if precision == "int8":
            calibration = random_inputs(entry, CALIBRATION_SIZE, seed=1)
            path = self.workdir / f"{entry.key}.int8.onnx"
            entry.int8_method = int8_method(entry.onnx["fp32"], calibration)
            quantize_int8(entry.onnx["fp32"], path, calibration)
            entry.onnx["int8"] = path
        self.export_seconds += time.perf_counter() - t0
        return entry.onnx[precision]

    def session(self, entry: Model, precision: str):  # noqa: ANN201 - onnxruntime.InferenceSession
        from kdverify.export.validate import ort_session

        key = (entry.key, precision)
        if key not in self._sessions:
            self._sessions[key] = ort_session(self.onnx_path(entry, precision), threads=self.settings.threads,
                                              optimization="all")
        return self._sessions[key]

    def inputs(self, entry: Model, batch: int) -> torch.Tensor:
        key = (entry.key, batch)
        if key not in self._inputs:
            self._inputs[key] = random_inputs(entry, batch)
        return self._inputs[key]
