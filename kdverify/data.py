"""Datasets as whole uint8 tensors on the device; batches are normalised and augmented there.

Why: per-sample Python (a PIL image per `__getitem__`, a DataLoader worker per core) costs more
than the MLP itself on CPU. A split is one resident uint8 tensor, a batch is one index, and
augmentation is one gather over the batch (the airbench pattern).

Layouts read (the same ones torchvision downloads, so a torchvision folder works unchanged):
  <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}         (original CIFAR-10, preferred)
  <root>/cifar10-jpeg/cifar10-jpeg-q75.tar.gz                     (lossy JPEG stand-in)

Other datasets plug in by name: `register_dataset("name", loader)` with `loader(root) -> Dataset`
(`Dataset.from_tensors` builds one from plain tensors). Failures are one line: `DataMissing` when
files are not there (claims skip), `DataCorrupt` when they are there but truncated, modified or
undecodable (always an error). The decoded JPEG cache is a copy: if it does not read back whole,
it is rebuilt, never trusted and never fatal.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdverify.errors import DataCorrupt, DataError, DataMissing
from kdverify.io import atomic_write_bytes, describe_os_error
from kdverify.locks import exclusive
from kdverify.paths import cache_dir as kd_cache_dir, data_root
from kdverify.registry import Registry, UnknownName, describe

# md5 of the *uncompressed* IDX bytes: the .gz wrapper may differ between mirrors.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CIFAR_BATCH_MD5 = {  # torchvision's checksums of the original python batches
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_JPEG_TAR = "cifar10-jpeg/cifar10-jpeg-q75.tar.gz"
CIFAR_JPEG_MD5 = "4525fa6bf275c7a753fb3748765c8a02"
# sha256 of the stand-in's labels (train then test, int64) as the tar's member paths name them: they do not
# depend on the JPEG decoder, so a decoded copy's labels are checked against the source, not just by shape.
CIFAR_JPEG_LABELS_SHA256 = "3e7dfa4663432dc193928c906dc1dbb2091756430f3bd5abdd5e969431e8ae7c"
CIFAR_JPEG_SPOT_CHECK = 64  # images decoded again from the start of the tar and compared with the copy, every load
CIFAR_JPEG_SIZES = {"train": 50000, "test": 10000}  # images per split in the tar whose md5 is above
CIFAR_IMAGE_SHAPE = (3, 32, 32)
MNIST_IMAGE_SHAPE = (1, 28, 28)

MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_NORM = ((0.5,), (0.5,))  # the blog's Normalize(0.5, 0.5)
CIFAR_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the tutorial's ImageNet statistics

HOW_TO_GET = (
    "point --data-root / KDVERIFY_DATA at a folder in torchvision's layout "
    "(e.g. torchvision.datasets.{name}(root, download=True) fills one)"
)
REDOWNLOAD = "delete it and download it again (torchvision.datasets.{name}(root, download=True) does)"
MNIST_FIX = REDOWNLOAD.format(name="MNIST")
CIFAR_FIX = REDOWNLOAD.format(name="CIFAR10")
CIFAR_JPEG_FIX = "replace it with an intact copy of cifar10-jpeg-q75.tar.gz"
CIFAR_JPEG_WHAT = "decoding CIFAR-10 JPEG stand-in"


def _say(message: str) -> None:
    print(f"kdverify: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """The first line of an exception, for one-line errors (zlib and zipfile messages can run long)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _read_bytes(path: Path, fix: str) -> bytes:
    """A file that is there but cannot be read (permissions, I/O error) is corrupt, not missing."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataCorrupt(f"cannot read {path} ({_reason(exc)}); {fix}") from None


def _md5_file(path: Path, fix: str) -> str:
    """md5 in 1 MiB chunks, so a large archive is never held in memory just to be hashed."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataCorrupt(f"cannot read {path} ({_reason(exc)}); {fix}") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class Split:
    """One split: images uint8 (N, C, H, W), or float32 features (N, D) for tabular data, and labels int64 (N,),
    both on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    """A dataset and where it came from; `variant` and `checksum` travel into every result."""

    name: str
    variant: str  # e.g. "mnist", "cifar10", "cifar10-jpeg-q75"
    checksum: str  # identifies the exact bytes (part of cache keys)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.images.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.variant, self.checksum, self.classes, self.mean, self.std,
                       self.train.to(device), self.test.to(device))

    @classmethod
    def from_tensors(cls, name: str, train_images: torch.Tensor, train_labels: torch.Tensor,
                     test_images: torch.Tensor, test_labels: torch.Tensor, classes: Sequence[str] | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     variant: str | None = None) -> "Dataset":
        """A Dataset from plain tensors: uint8 images (N, C, H, W) and integer labels (N,).

        Checked here, so a float image or a one-hot label fails in one line instead of deep in
        training. Defaults: classes "0".."max label", mean/std of the train images (per channel,
        on the 0..1 scale), variant = name. The checksum covers the bytes and the normalisation.
        """
        train = _checked_split("train", train_images, train_labels)
        test = _checked_split("test", test_images, test_labels)
        if train.images.shape[1:] != test.images.shape[1:]:
            raise DataError(f"train images are {tuple(train.images.shape[1:])} but test images are "
                            f"{tuple(test.images.shape[1:])}; both splits need the same (C, H, W)")
        top = int(max(train.labels.max(), test.labels.max()))
        names = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(top + 1))
        if top >= len(names):
            raise DataError(f"label {top} needs at least {top + 1} classes but {len(names)} are named; fix the "
                            "labels or pass more classes")
        stats = _channel_stats(train.images) if mean is None or std is None else (mean, std)
        mean = tuple(float(v) for v in (stats[0] if mean is None else mean))
        std = tuple(float(v) for v in (stats[1] if std is None else std))
        _check_norm(mean, std, channels=train.images.shape[1])
        checksum = _tensors_checksum(train, test, names, mean, std)
        return cls(name, variant or name, checksum, names, mean, std, train, test)


def is_tabular(input_shape: Sequence[int]) -> bool:
    """(D,) inputs: float feature vectors, normalised per feature on their own scale (images are (C, H, W))."""
    return len(tuple(input_shape)) == 1


def _checked_split(split: str, images: torch.Tensor, labels: torch.Tensor) -> Split:
    """Images must already be uint8 (guessing a float scale would normalise wrongly), or float features (N, D)
    for tabular data (kept on their own scale); labels any integer type."""
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.ndim == 2 and images.dtype.is_floating_point:
        images = images.to(torch.float32)
        if not bool(torch.isfinite(images).all()):
            raise DataError(f"{split} features must be finite (a NaN or inf is in them)")
    elif images.dtype != torch.uint8 or images.ndim != 4:
        raise DataError(f"{split} images must be uint8 (N, C, H, W), or float features (N, D) for tabular data; got "
                        f"{images.dtype} {tuple(images.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.ndim != 1:
        raise DataError(f"{split} labels must be integer class indices (N,), got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) != len(images) or len(labels) == 0:
        raise DataError(f"{split} split has {len(images)} images and {len(labels)} labels; it needs the same "
                        "number, at least one")
    if int(labels.min()) < 0:
        raise DataError(f"{split} labels must be >= 0, found {int(labels.min())}")
    return Split(images, labels.to(images.device, torch.int64))


def _channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images / 255, in float64 chunks (a float copy of CIFAR is 600 MB); per feature,
    on the features' own scale, for tabular data."""
    if images.ndim == 2:
        features = images.to(torch.float64)
        return features.mean(0).tolist(), features.std(0, unbiased=False).tolist()
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean.tolist(), (squares / count - mean * mean).clamp_min(0).sqrt().tolist()


def _check_norm(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean and std need one value per channel or feature ({channels}), got {len(mean)} and "
                        f"{len(std)}")
    if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in std):
        raise DataError(f"std must be positive and finite per channel or feature, got {list(std)[:8]} (a constant "
                        "channel or feature has std 0: pass std=)")


def _tensors_checksum(train: Split, test: Split, classes: tuple[str, ...],
                      mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """sha256 of the exact bytes plus what changes training on them (shapes, classes, normalisation),
    because the checksum is part of every cache key."""
    parts = (train.images, train.labels, test.images, test.labels)
    header = {"shapes": [list(t.shape) for t in parts], "classes": classes, "mean": mean, "std": std}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for tensor in parts:
        digest.update(tensor.detach().cpu().contiguous().numpy())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- MNIST


def _mnist_payload(raw_dir: Path, name: str) -> bytes:
    """The uncompressed IDX bytes of `name` or `name.gz`; a broken gzip stream is DataCorrupt, not a traceback."""
    plain, packed = raw_dir / name, raw_dir / f"{name}.gz"
    if plain.is_file():
        return _read_bytes(plain, MNIST_FIX)
    if not packed.is_file():
        raise DataMissing(f"MNIST file {name}[.gz] not found in {raw_dir}; {HOW_TO_GET.format(name='MNIST')}")
    payload = _read_bytes(packed, MNIST_FIX)
    try:
        return gzip.decompress(payload)
    except (zlib.error, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DataCorrupt(f"MNIST file {packed} is not a valid gzip stream ({_reason(exc)}); {MNIST_FIX}") from None


def _parse_idx(payload: bytes, where: Path) -> np.ndarray:
    """IDX: two zero bytes, type 0x08 (uint8), ndim, ndim big-endian sizes, then exactly that many bytes."""
    ndim = payload[3] if len(payload) >= 4 and payload[:3] == b"\x00\x00\x08" else -1
    dims = np.frombuffer(payload, ">u4", count=ndim, offset=4).astype(int) if 4 + 4 * ndim <= len(payload) else None
    if ndim < 1 or dims is None or len(payload) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataCorrupt(f"MNIST file {where} is not a uint8 IDX file of the size its header says; {MNIST_FIX}")
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_idx(raw_dir: Path, name: str) -> np.ndarray:
    payload = _mnist_payload(raw_dir, name)
    digest = hashlib.md5(payload).hexdigest()
    if digest != MNIST_MD5[name]:
        raise DataCorrupt(f"MNIST file {name}[.gz] in {raw_dir} fails its checksum (md5 {digest}, expected "
                          f"{MNIST_MD5[name]}): truncated or not canonical MNIST; {MNIST_FIX}")
    return _parse_idx(payload, raw_dir / name)


def load_mnist(root: str | os.PathLike | None = None) -> Dataset:
    """Canonical MNIST (60,000 + 10,000), verified against the md5 of each uncompressed file."""
    raw_dir = data_root(root) / "MNIST" / "raw"
    arrays = {name: _read_idx(raw_dir, name) for name in MNIST_MD5}
    split = lambda prefix: Split(  # noqa: E731
        torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"].copy()).unsqueeze(1),
        torch.from_numpy(arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64)),
    )
    checksum = hashlib.sha256("".join(MNIST_MD5.values()).encode()).hexdigest()[:16]
    return Dataset("mnist", "mnist", checksum, MNIST_CLASSES, *MNIST_NORM, split("train"), split("t10k"))


# ---------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The original batches are pickles: allow only the numpy reconstructors they need, never code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / name
    if not path.is_file():
        raise DataMissing(f"CIFAR-10 file {name} not found in {folder}; {HOW_TO_GET.format(name='CIFAR10')}")
    payload = _read_bytes(path, CIFAR_FIX)
    digest = hashlib.md5(payload).hexdigest()
    if digest != CIFAR_BATCH_MD5[name]:
        raise DataCorrupt(f"CIFAR-10 file {path} fails its checksum (md5 {digest}, expected {CIFAR_BATCH_MD5[name]}): "
                          f"truncated or modified; {CIFAR_FIX}")
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, *CIFAR_IMAGE_SHAPE)
        labels = np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise DataCorrupt(f"CIFAR-10 file {path} cannot be decoded ({_reason(exc)}); {CIFAR_FIX}") from None
    if labels.shape != (len(images),):
        raise DataCorrupt(f"CIFAR-10 file {path} has {len(images)} images but {labels.size} labels; {CIFAR_FIX}")
    return images, labels


def _load_cifar_batches(folder: Path) -> tuple[Split, Split]:
    train = [_read_cifar_batch(folder, f"data_batch_{i}") for i in range(1, 6)]
    test = _read_cifar_batch(folder, "test_batch")
    to_split = lambda x, y: Split(torch.from_numpy(x), torch.from_numpy(y))  # noqa: E731
    return (to_split(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            to_split(*test))


def _cifar_arrays_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with decoded stand-in arrays (keys, dtypes, shapes, label range), or None if nothing."""
    for split, n in CIFAR_JPEG_SIZES.items():
        x, y = arrays.get(f"{split}_x"), arrays.get(f"{split}_y")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            return f"no {split} arrays"
        if x.dtype != np.uint8 or x.shape != (n, *CIFAR_IMAGE_SHAPE):
            return f"{split} images are {x.dtype} {x.shape}, expected uint8 {(n, *CIFAR_IMAGE_SHAPE)}"
        if y.dtype != np.int64 or y.shape != (n,):
            return f"{split} labels are {y.dtype} {y.shape}, expected int64 {(n,)}"
        if n and (int(y.min()) < 0 or int(y.max()) >= len(CIFAR_CLASSES)):
            return f"{split} labels outside 0..{len(CIFAR_CLASSES) - 1}"
    return None


def _source_problem(tar_path: Path, arrays: dict[str, np.ndarray]) -> str | None:
    """Does a decoded copy match its source? Labels: all of them, against the digest of the tar's member paths.
    Pixels: the first images of the tar, decoded again (exactly what this machine's decoder gives)."""
    labels = np.concatenate([arrays["train_y"], arrays["test_y"]]).astype(np.int64)
    if hashlib.sha256(labels.tobytes()).hexdigest() != CIFAR_JPEG_LABELS_SHA256:
        return "its labels are not the source's"
    fresh = _decode_members(tar_path, limit=CIFAR_JPEG_SPOT_CHECK)
    for split in CIFAR_JPEG_SIZES:
        x = fresh[f"{split}_x"]
        if len(x) and not np.array_equal(arrays[f"{split}_x"][:len(x)], x):
            return f"its first {split} images differ from the source's"
    return None


def _decode_members(tar_path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Decode the tar's JPEGs in member order (the first `limit` only, for a spot check)."""
    from PIL import Image

    images: dict[str, list[np.ndarray]] = {split: [] for split in CIFAR_JPEG_SIZES}
    labels: dict[str, list[int]] = {split: [] for split in CIFAR_JPEG_SIZES}
    index = {name: i for i, name in enumerate(CIFAR_CLASSES)}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or not parts[2].endswith(".jpg"):
                continue
            split, cls, _ = parts
            if split not in images or cls not in index:
                raise ValueError(f"{member.name} is not <train|test>/<CIFAR-10 class>/<n>.jpg")
            with Image.open(tar.extractfile(member)) as img:
                images[split].append(np.asarray(img.convert("RGB"), np.uint8).transpose(2, 0, 1))
            labels[split].append(index[cls])
            if limit is not None and sum(map(len, images.values())) >= limit:
                break
    return {f"{s}_{k}": (np.stack(images[s]) if images[s] else np.zeros((0, *CIFAR_IMAGE_SHAPE), np.uint8))
            if k == "x" else np.asarray(labels[s], np.int64) for s in CIFAR_JPEG_SIZES for k in ("x", "y")}


def _decode_jpeg_tar(tar_path: Path) -> dict[str, np.ndarray]:
    """Decode every JPEG once (PIL, outside any training loop) into uint8 arrays, checked against
    CIFAR_JPEG_SIZES; an archive that does not decode is DataCorrupt."""
    try:
        arrays = _decode_members(tar_path)
    except (tarfile.TarError, zlib.error, EOFError, OSError, KeyError, ValueError) as exc:
        raise DataCorrupt(f"{tar_path} cannot be decoded ({_reason(exc)}); {CIFAR_JPEG_FIX}") from None
    problem = _cifar_arrays_problem(arrays)
    if problem:
        raise DataCorrupt(f"{tar_path} does not hold the expected images ({problem}); {CIFAR_JPEG_FIX}")
    return arrays


def _read_cifar_cache(path: Path, source: Path | None = None) -> tuple[dict[str, np.ndarray] | None, str]:
    """The cached arrays, or (None, why not).

    Any exception counts as "rebuild" on purpose: the file is a copy we can remake, and a flipped
    byte surfaces as BadZipFile, Bad CRC-32, KeyError, ValueError, RuntimeError ("encrypted") and more.
    """
    if not path.is_file():
        return None, "not decoded yet"
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            return None, "not an npz archive"
        with npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # noqa: BLE001 - see docstring
        return None, _reason(exc)
    problem = _cifar_arrays_problem(arrays) or (_source_problem(source, arrays) if source is not None else None)
    return (None, problem) if problem else (arrays, "")


def _write_cifar_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary and rename over the old file, so a process still reading the old one keeps
    its (unlinked) copy; a cache that cannot be written only costs a decode next time."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as exc:
        _say(f"cannot write {path} ({describe_os_error(exc)}); the JPEGs will be decoded again next time")


def _fill_cifar_cache(tar_path: Path, cached: Path) -> dict[str, np.ndarray]:
    """Under the lock: look again first (another process may have filled it while we waited)."""
    arrays, why = _read_cifar_cache(cached, tar_path)
    if arrays is not None:
        return arrays
    if cached.exists():
        _say(f"{cached} does not read back ({why}); decoding {tar_path.name} again")
    else:
        _say(f"decoding {tar_path.name} into {cached} (once)")
    arrays = _decode_jpeg_tar(tar_path)
    _write_cifar_cache(cached, arrays)
    return arrays


def _cifar_jpeg_arrays(tar_path: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """The stand-in as arrays: from the cache when it reads back whole, else decoded by one process
    while any others wait for it (kdverify.locks), then cached."""
    digest = _md5_file(tar_path, CIFAR_JPEG_FIX)
    if digest != CIFAR_JPEG_MD5:
        raise DataCorrupt(f"{tar_path} fails its checksum (md5 {digest}, expected {CIFAR_JPEG_MD5}): truncated or "
                          f"modified; {CIFAR_JPEG_FIX}")
    cached = Path(cache_dir) / f"cifar10-jpeg-q75-{digest[:12]}.npz"
    arrays, _ = _read_cifar_cache(cached, tar_path)  # unlocked fast path: files are only ever renamed into place
    if arrays is not None:
        return arrays
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(cached, CIFAR_JPEG_WHAT, say=_say))
        except OSError as exc:
            _say(f"cannot lock {cached} ({describe_os_error(exc)}); decoding {tar_path.name} without caching it")
            return _decode_jpeg_tar(tar_path)
        return _fill_cifar_cache(tar_path, cached)


def _load_cifar_jpeg(tar_path: Path, cache_dir: Path) -> tuple[Split, Split]:
    arrays = _cifar_jpeg_arrays(tar_path, cache_dir)
    split = lambda s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"]))  # noqa: E731
    return split("train"), split("test")


def load_cifar10(root: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Dataset:
    """Original CIFAR-10 when present, else the JPEG q75 stand-in (decoded once into the cache)."""
    base = data_root(root)
    original, jpeg = base / "cifar-10-batches-py", base / CIFAR_JPEG_TAR
    if original.is_dir():
        train, test = _load_cifar_batches(original)
        variant, checksum = "cifar10", hashlib.sha256("".join(CIFAR_BATCH_MD5.values()).encode()).hexdigest()[:16]
    elif jpeg.is_file():
        train, test = _load_cifar_jpeg(jpeg, cache_dir or kd_cache_dir())
        variant, checksum = "cifar10-jpeg-q75", CIFAR_JPEG_MD5[:16]
    else:
        raise DataMissing(f"CIFAR-10 not found: looked for {original}/ and {jpeg}; {HOW_TO_GET.format(name='CIFAR10')}")
    return Dataset("cifar10", variant, checksum, CIFAR_CLASSES, *CIFAR_NORM, train, test)


# ---------------------------------------------------------------- registry

Loader = Callable[[str | os.PathLike | None], Dataset]
LOADERS: Registry[Loader] = Registry(  # name -> loader(root); fill it with register_dataset
    "dataset", "kdverify.datasets", "register it with kdverify.data.register_dataset or --import a module that does")


DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {}  # name -> (input shape, classes), where declared


def register_dataset(name: str, loader: Loader, replace: bool = False,
                     shape: tuple[Sequence[int], int] | None = None) -> Loader:
    """Make `load_dataset(name)` (so every recipe naming `name`) call `loader(root) -> Dataset`.

    Registering a second, different loader under a taken name is refused unless `replace=True`,
    so two plugins cannot silently swap each other's data; re-registering the same one is a no-op.
    `shape=((C, H, W) or (D,), classes)` declares what the data will look like, so recipes on it are
    checked (models, taps, adapters, on the meta device) when they are read, before any data is loaded.
    """
    if not callable(loader):
        raise TypeError(f"the loader of dataset {name!r} must be callable as loader(root), got {loader!r}")
    registered = LOADERS.register(name, loader, replace=replace)
    if shape is not None:
        DATASET_SHAPES[name] = (tuple(int(d) for d in shape[0]), int(shape[1]))
    return registered


register_dataset("mnist", load_mnist, shape=(MNIST_IMAGE_SHAPE, len(MNIST_CLASSES)))
register_dataset("cifar10", load_cifar10, shape=(CIFAR_IMAGE_SHAPE, len(CIFAR_CLASSES)))


def load_dataset(name: str, root: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu") -> Dataset:
    """Load a dataset by name and move both splits onto `device` once."""
    try:
        loader = LOADERS.lookup(name)
    except UnknownName as exc:
        raise DataError(str(exc)) from None
    dataset = loader(root)
    if not isinstance(dataset, Dataset):
        raise DataError(f"the loader of dataset {name!r} ({describe(loader)}) returned {type(dataset).__name__}, "
                        "not a kdverify.data.Dataset (Dataset.from_tensors builds one)")
    return dataset.to(device)


# ---------------------------------------------------------------- subsets and filters


def filter_classes(split: Split, keep: Sequence[int] | None = None, drop: Sequence[int] | None = None) -> Split:
    """Transfer-set filters: keep only some classes (7s and 8s) or drop some (no 3s)."""
    mask = torch.ones_like(split.labels, dtype=torch.bool)
    if keep:
        mask &= torch.isin(split.labels, torch.tensor(list(keep), device=split.labels.device))
    if drop:
        mask &= ~torch.isin(split.labels, torch.tensor(list(drop), device=split.labels.device))
    return split.take(mask.nonzero().squeeze(1))


def split_holdout(split: Split, size: int) -> tuple[Split, Split]:
    """The last `size` examples become a held-out slice (for tuning without touching test)."""
    if size <= 0:
        return split, split.take(torch.arange(0, device=split.labels.device))
    if size >= len(split):
        raise ValueError(f"holdout = {size:,} leaves nothing to train on: the training split has {len(split):,} "
                         "examples (after the transfer-set filters)")
    n = len(split) - size
    return split.take(torch.arange(n, device=split.labels.device)), \
        split.take(torch.arange(n, len(split), device=split.labels.device))


def balanced_subset(split: Split, size: int, num_classes: int, seed: int = 0) -> Split:
    """A fixed, class-balanced subset: `size // num_classes` examples of each class, in split order.

    `seed` alone picks which examples (same seed, same subset, on any device). A size that does not
    split evenly, or a class with too few examples, is an error rather than a silently unbalanced subset.
    """
    if num_classes < 1 or size < num_classes or size % num_classes:
        raise ValueError(f"a balanced subset of {size} examples over {num_classes} classes needs a positive "
                         f"multiple of {num_classes}")
    per_class = size // num_classes
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).to(split.labels.device)
    labels = split.labels[order]
    picked = [order[labels == c][:per_class] for c in range(num_classes)]
    short = [f"{c} has {len(p)}" for c, p in enumerate(picked) if len(p) < per_class]
    if short:
        raise ValueError(f"a balanced subset of {size} needs {per_class} examples of each class, but class "
                         f"{', '.join(short)}")
    return split.take(torch.cat(picked).sort().values)


# ---------------------------------------------------------------- batched, on-device augmentation


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32, (x/255 - mean) / std as one scale and one shift per channel; float features
    (B, D) -> (x - mean) / std per feature."""
    if images.ndim == 2:
        mean_f = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1)
        std_f = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1)
        return (images.float() - mean_f) / std_f
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    return torch.addcmul(-mean_t / std_t, images.float(), 1.0 / (255.0 * std_t))


def translate(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift image i by (dy[i], dx[i]) - max_shift pixels, zero fill: one gather over the padded batch.

    Equals torchvision's RandomAffine(translate) with integer shifts (or RandomCrop(padding))
    without a PIL image per sample.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    wp = w + 2 * max_shift
    window = (torch.arange(h, device=images.device)[:, None] * wp + torch.arange(w, device=images.device)).view(1, -1)
    index = (window + (dy * wp + dx)[:, None])[:, None, :].expand(b, c, h * w)
    return padded.view(b, c, -1).gather(2, index).view(b, c, h, w)


@dataclass(frozen=True)
class Augmentation:
    """A finite family of image variants (integer shifts, optional mirror), drawn per sample.

    Every augmented image is one of `variants` copies of its source, named by a variant id, so a
    fixed teacher's outputs on all of them can be computed once and looked up by (variant, index)
    instead of running the teacher on every batch of every epoch.
    """

    name: str
    max_shift: int = 0
    flip: bool = False

    @property
    def variants(self) -> int:
        return (2 * self.max_shift + 1) ** 2 * (2 if self.flip else 1)

    def draw(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Variant ids for a batch (int64, on the CPU): shifts first, then the mirror coin."""
        ids = torch.zeros(batch, dtype=torch.int64)
        if self.max_shift:
            shifts = torch.randint(0, 2 * self.max_shift + 1, (2, batch), generator=generator)
            ids = shifts[0] * (2 * self.max_shift + 1) + shifts[1]
        if self.flip:
            ids = ids * 2 + (torch.rand(batch, generator=generator) < 0.5).long()
        return ids

    def apply(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The variants `ids` of `images` (uint8 or float, (B, C, H, W)); tabular features only take `none`."""
        if images.ndim != 4 and (self.flip or self.max_shift):
            raise ValueError(f"augmentation {self.name!r} shifts or mirrors images; tabular features (N, D) take "
                             "augment = 'none'")
        ids, mirror = ids.to(images.device), None
        if self.flip:
            mirror, ids = ids % 2 == 1, ids // 2
        if self.max_shift:
            side = 2 * self.max_shift + 1
            images = translate(images, ids // side, ids % side, self.max_shift)
        if mirror is not None:
            images = torch.where(mirror[:, None, None, None], images.flip(3), images)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator))


AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation("none"),
    Augmentation("jitter2", max_shift=2),  # Hinton / blog MNIST: up to 2 px each way
    Augmentation("flip", flip=True),  # CIFAR mirror only: 2 variants, so a teacher's outputs can be cached
    Augmentation("crop4-flip", max_shift=4, flip=True),  # standard CIFAR: pad-4 crop + mirror
)}


def get_augmentation(kind: str) -> Augmentation:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[kind]


def augment(images: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Named augmentations (see AUGMENTATIONS), batched on the images' device."""
    return get_augmentation(kind)(images, generator)


def random_raw_inputs(count: int, input_shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Inputs like the data's, before `normalize`: uint8 pixels, or features around their mean (tabular)."""
    if is_tabular(input_shape):
        noise = torch.randn(count, *input_shape, generator=generator)
        return noise * torch.tensor(std).view(1, -1) + torch.tensor(mean).view(1, -1)
    return torch.randint(0, 256, (count, *input_shape), generator=generator, dtype=torch.uint8)


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (index, uint8 images, labels) batches of one epoch; the shuffle is one randperm."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield idx, split.images[idx], split.labels[idx]
