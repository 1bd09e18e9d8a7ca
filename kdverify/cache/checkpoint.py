"""Self-describing checkpoints: plain dicts of tensors, strings and numbers.

A checkpoint names its architecture and constructor arguments, so it rebuilds without any
pickled class, and loads with `torch.load(weights_only=True)`: a file that tries to run code
is refused, never executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import kdverify
from kdverify.cache.manifest import read_manifest
from kdverify.data import Dataset
from kdverify.errors import CheckpointError, first_line
from kdverify.io import atomic_write_bytes
from kdverify.train.models import ARCHITECTURES, TappedModel, build_model

FORMAT = "kdverify-checkpoint"
FORMAT_VERSION = 3  # 2: a content hash of the tensors; 3: a seal over everything else too; verified on every load
SEALED_SINCE = 3
_UNSEALED = ("state_dict", "weights_sha256", "payload_sha256")  # what the seal does not hash (the weights have theirs)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model plus everything that describes it."""

    model: TappedModel
    arch: str
    arch_kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset_variant: str
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    versions: dict[str, str]
    sha256: str  # of the file's bytes (exports record where they came from)
    weights_sha256: str = ""  # of the tensors (state_digest), verified on load; "" only in format-1 files
    dataset: str = ""  # registered dataset name the model was trained on


def library_versions() -> dict[str, str]:
    return {"kdverify": kdverify.__version__, "torch": str(torch.__version__), "python": platform.python_version()}


def machine_description(device: torch.device | str = "cpu") -> str:
    """What trained or measured something: GPU name, or CPU model, cores and vector ISA (results differ by ISA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in (platform.processor(), platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    kernels = f"{torch.backends.cpu.get_cpu_capability()} kernels"  # what ran: ATEN_CPU_CAPABILITY can cap it
    return ", ".join(x for x in (model, f"{os.cpu_count()} CPUs", isa, kernels, f"{torch.get_num_threads()} threads")
                     if x)


def state_digest(model: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 of the weights themselves (names, dtypes, shapes, bytes): identical models, identical digest."""
    state = model if isinstance(model, dict) else model.state_dict()
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (BatchNorm)
    return h.hexdigest()


def payload_seal(payload: dict[str, Any]) -> str:
    """sha256 of every field but the tensors (arch, shapes, classes, normalisation, dataset, recipe, metrics,
    versions) plus the weights' own digest: one flipped bit anywhere in a checkpoint changes it."""
    rest = {k: v for k, v in payload.items() if k not in _UNSEALED}
    text = json.dumps(rest, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(f"{text}|{payload.get('weights_sha256')}".encode()).hexdigest()


def checkpoint_payload(model: TappedModel, arch: str, arch_kwargs: dict[str, Any], dataset: Dataset,
                       recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> dict:
    """The dict that is saved: nothing in it needs a class to unpickle, and its tensors carry their hash."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": state,
        "weights_sha256": state_digest(state),
        "dataset": dataset.name,
        "input_shape": [int(d) for d in dataset.input_shape],
        "classes": list(dataset.classes),
        "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)},
        "dataset_variant": dataset.variant,
        "recipe": dict(recipe or {}),
        "metrics": dict(metrics or {}),
        "versions": library_versions(),
    }
    payload["payload_sha256"] = payload_seal(payload)
    return payload


def save_checkpoint(path: str | os.PathLike, payload: dict, force: bool = False) -> Path:
    """Write atomically; refuse to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise CheckpointError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory")
    try:
        atomic_write_bytes(path, checkpoint_bytes(payload))
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def checkpoint_bytes(payload: dict) -> bytes:
    """A checkpoint as bytes: what a file holds, and what a remote training task sends back."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    accept_unsealed: bool = False) -> Checkpoint:
    """Load and rebuild; every failure is a one-line CheckpointError naming the problem.

    Weights and everything else are verified against their digests. A checkpoint older than format 3 has
    no seal over its metadata (normalisation, classes, metrics): refused, unless the caller verifies the whole
    file some other way (`accept_unsealed`: the pinned teachers' manifest sha256) or never believes its
    metadata (the model cache re-measures a model from its weights)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return checkpoint_from_bytes(blob, path, map_location, accept_unsealed)


def checkpoint_from_bytes(blob: bytes, path: str | os.PathLike, map_location: str | torch.device = "cpu",
                          accept_unsealed: bool = False) -> Checkpoint:
    """`load_checkpoint` of bytes already read (a file, or a remote task's result); `path` names them in errors."""
    if not blob:
        raise CheckpointError(f"{path} is empty")
    try:
        payload = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
        reason = first_line(exc)
        if "unsupported global" in str(exc).lower():  # every weights_only failure says weights_only; this is code
            reason = "it contains pickled code or classes, refused under weights_only=True"
        elif "weights_only" in str(exc):
            reason = "not a PyTorch checkpoint file"
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kdverify checkpoint (no '{FORMAT}' header)")
    arch, state = payload.get("arch"), payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no weights (state_dict) in the checkpoint")
    recorded = payload.get("weights_sha256")
    try:
        version = int(payload.get("format_version", 1))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: format_version {payload.get('format_version')!r} is not a number") from None
    if version < SEALED_SINCE and not accept_unsealed and not _is_pinned_file(blob):
        raise CheckpointError(f"{path}: format {version} (an older kdverify): its normalisation, classes and metrics "
                              "are not covered by a digest, so they cannot be trusted; train it again with this "
                              "kdverify")
    if version >= 2 or recorded is not None:
        if state_digest(state) != recorded:
            raise CheckpointError(f"{path}: its weights do not match their recorded sha256 "
                                  f"({str(recorded)[:16]}): the file is corrupt or was modified; retrain or restore it")
    if version >= SEALED_SINCE and payload_seal(payload) != payload.get("payload_sha256"):
        raise CheckpointError(f"{path}: its metadata (normalisation, classes, recipe, metrics) does not match its "
                              "recorded sha256: the file is corrupt or was modified; retrain or restore it")
    _check_fields(path, payload)
    model = _rebuild(path, arch, payload, state)
    model.eval()
    norm = payload.get("normalization", {})
    return Checkpoint(
        model=model, arch=arch, arch_kwargs=dict(payload.get("arch_kwargs", {})),
        input_shape=tuple(payload.get("input_shape", ())), classes=tuple(payload.get("classes", ())),
        mean=tuple(norm.get("mean", ())), std=tuple(norm.get("std", ())),
        dataset_variant=str(payload.get("dataset_variant", "")), recipe=dict(payload.get("recipe", {})),
        metrics=dict(payload.get("metrics", {})), versions=dict(payload.get("versions", {})),
        sha256=hashlib.sha256(blob).hexdigest(), weights_sha256=str(recorded or ""),
        dataset=str(payload.get("dataset") or payload.get("recipe", {}).get("dataset") or ""),
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_FIELD_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {  # field -> (what it must be, test)
    "arch": ("a string", lambda v: isinstance(v, str)),
    "arch_kwargs": ("a mapping", lambda v: isinstance(v, dict)),
    "input_shape": ("a list of positive integers", lambda v: isinstance(v, (list, tuple)) and bool(v) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)),
    "classes": ("a list of class names", lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v)),
    "normalization": ("a mapping of mean and std lists", lambda v: isinstance(v, dict) and all(
        isinstance(v.get(k), (list, tuple)) and v.get(k) and all(_is_number(x) for x in v[k])
        for k in ("mean", "std"))),
    "dataset": ("a string", lambda v: isinstance(v, str)),
    "dataset_variant": ("a string", lambda v: isinstance(v, str)),
    "recipe": ("a mapping", lambda v: isinstance(v, dict)),
    "metrics": ("a mapping", lambda v: isinstance(v, dict)),
    "versions": ("a mapping", lambda v: isinstance(v, dict)),
}


def _check_fields(path: Path, payload: dict) -> None:
    """Every described field has the type its readers expect: a malformed one is a line naming it, never a
    TypeError or AttributeError from deep inside evaluate or export."""
    for name, (what, ok) in _FIELD_RULES.items():
        if name in payload and not ok(payload[name]):
            raise CheckpointError(f"{path}: field {name!r} must be {what}, not {str(payload[name])[:60]!r}")
    missing = [k for k in ("arch", "input_shape", "normalization") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")


def checkpoint_fits_data(ckpt: "Checkpoint", dataset: Dataset, what: str) -> None:
    """A checkpoint evaluated (or exported, or used as a teacher) on a dataset must have that data's classes and
    input shape: an MLP labelled cifar10 is a line, not a matrix-multiplication error."""
    shape = tuple(dataset.test.images.shape[1:])
    if len(ckpt.classes) != len(dataset.classes) or tuple(ckpt.input_shape) != shape:
        raise CheckpointError(f"{what} has {len(ckpt.classes)} classes and inputs {tuple(ckpt.input_shape)}; "
                              f"{dataset.name!r} ({dataset.variant}) has {len(dataset.classes)} classes and inputs "
                              f"{shape}")


def _is_pinned_file(blob: bytes) -> bool:
    """A file whose sha256 is a pinned teacher's in the shipped manifest: verified whole, whatever its format."""
    digest = hashlib.sha256(blob).hexdigest()
    return any(entry.get("sha256") == digest for entry in read_manifest().values())


def _rebuild(path: Path, arch: Any, payload: dict, state: dict[str, torch.Tensor]) -> TappedModel:
    """Rebuild the model, first on the meta device: constructor arguments, weight shapes, input shape and
    class count are checked without allocating (a checkpoint asking for hidden=10**7 costs nothing)."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)}); import the "
                              "module that registers it (--import MODULE) or install the package that provides it")
    kwargs = payload.get("arch_kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: constructor arguments of {arch} are not a mapping")
    try:
        with torch.device("meta"):
            skeleton = build_model(arch, **kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{path}: bad constructor arguments for {arch} {kwargs}: {first_line(exc)}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:2]
        raise CheckpointError(f"{path}: weights do not fit {arch}({kwargs}): first differences {diff}")
    input_shape, classes = payload.get("input_shape", ()), payload.get("classes", ())
    try:
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape {list(input_shape)}")
        logits = skeleton.eval()(torch.empty(1, *shape, device="meta"))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{path}: {arch} does not accept its recorded input shape "
                              f"{list(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape!r}: "
                              f"{first_line(exc)}") from None
    if classes and logits.shape[-1] != len(classes):
        raise CheckpointError(f"{path}: {arch} has {logits.shape[-1]} outputs but {len(classes)} classes are recorded")
    model = build_model(arch, **kwargs)
    model.load_state_dict(state)
    return model

