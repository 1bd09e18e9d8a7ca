"""CIFAR-10: the original python batches (numpy-only unpickling), else the lossy JPEG stand-in, decoded once by
one process into a cache that is checked against its source on every load and rebuilt, never trusted, when it is
not whole."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from kdverify.data.files import HOW_TO_GET, REDOWNLOAD, md5_file, read_bytes, reason, say
from kdverify.data.splits import Dataset, Split
from kdverify.errors import DataCorrupt, DataMissing
from kdverify.io import atomic_write_bytes, describe_os_error
from kdverify.locks import exclusive
from kdverify.paths import cache_dir as kd_cache_dir
from kdverify.paths import data_root

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
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the tutorial's ImageNet statistics
CIFAR_FIX = REDOWNLOAD.format(name="CIFAR10")
CIFAR_JPEG_FIX = "replace it with an intact copy of cifar10-jpeg-q75.tar.gz"
CIFAR_JPEG_WHAT = "decoding CIFAR-10 JPEG stand-in"


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
    payload = read_bytes(path, CIFAR_FIX)
    digest = hashlib.md5(payload).hexdigest()
    if digest != CIFAR_BATCH_MD5[name]:
        raise DataCorrupt(f"CIFAR-10 file {path} fails its checksum (md5 {digest}, expected {CIFAR_BATCH_MD5[name]}): "
                          f"truncated or modified; {CIFAR_FIX}")
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, *CIFAR_IMAGE_SHAPE)
        labels = np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise DataCorrupt(f"CIFAR-10 file {path} cannot be decoded ({reason(exc)}); {CIFAR_FIX}") from None
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
        raise DataCorrupt(f"{tar_path} cannot be decoded ({reason(exc)}); {CIFAR_JPEG_FIX}") from None
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
        return None, reason(exc)
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
        say(f"cannot write {path} ({describe_os_error(exc)}); the JPEGs will be decoded again next time")


def _fill_cifar_cache(tar_path: Path, cached: Path) -> dict[str, np.ndarray]:
    """Under the lock: look again first (another process may have filled it while we waited)."""
    arrays, why = _read_cifar_cache(cached, tar_path)
    if arrays is not None:
        return arrays
    if cached.exists():
        say(f"{cached} does not read back ({why}); decoding {tar_path.name} again")
    else:
        say(f"decoding {tar_path.name} into {cached} (once)")
    arrays = _decode_jpeg_tar(tar_path)
    _write_cifar_cache(cached, arrays)
    return arrays


def _cifar_jpeg_arrays(tar_path: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """The stand-in as arrays: from the cache when it reads back whole, else decoded by one process
    while any others wait for it (kdverify.locks), then cached."""
    digest = md5_file(tar_path, CIFAR_JPEG_FIX)
    if digest != CIFAR_JPEG_MD5:
        raise DataCorrupt(f"{tar_path} fails its checksum (md5 {digest}, expected {CIFAR_JPEG_MD5}): truncated or "
                          f"modified; {CIFAR_JPEG_FIX}")
    cached = Path(cache_dir) / f"cifar10-jpeg-q75-{digest[:12]}.npz"
    arrays, _ = _read_cifar_cache(cached, tar_path)  # unlocked fast path: files are only ever renamed into place
    if arrays is not None:
        return arrays
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive(cached, CIFAR_JPEG_WHAT, say=say))
        except OSError as exc:
            say(f"cannot lock {cached} ({describe_os_error(exc)}); decoding {tar_path.name} without caching it")
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
