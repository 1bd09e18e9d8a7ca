"""Canonical MNIST from the IDX files torchvision downloads (plain or .gz), verified by md5."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from kdverify.data.files import HOW_TO_GET, REDOWNLOAD, read_bytes, reason
from kdverify.data.splits import Dataset, Split
from kdverify.errors import DataCorrupt, DataMissing
from kdverify.paths import data_root

# md5 of the *uncompressed* IDX bytes: the .gz wrapper may differ between mirrors.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_IMAGE_SHAPE = (1, 28, 28)
MNIST_CLASSES = tuple(str(d) for d in range(10))
MNIST_NORM = ((0.5,), (0.5,))  # the blog's Normalize(0.5, 0.5)
MNIST_FIX = REDOWNLOAD.format(name="MNIST")


def _mnist_payload(raw_dir: Path, name: str) -> bytes:
    """The uncompressed IDX bytes of `name` or `name.gz`; a broken gzip stream is DataCorrupt, not a traceback."""
    plain, packed = raw_dir / name, raw_dir / f"{name}.gz"
    if plain.is_file():
        return read_bytes(plain, MNIST_FIX)
    if not packed.is_file():
        raise DataMissing(f"MNIST file {name}[.gz] not found in {raw_dir}; {HOW_TO_GET.format(name='MNIST')}")
    payload = read_bytes(packed, MNIST_FIX)
    try:
        return gzip.decompress(payload)
    except (zlib.error, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DataCorrupt(f"MNIST file {packed} is not a valid gzip stream ({reason(exc)}); {MNIST_FIX}") from None


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
