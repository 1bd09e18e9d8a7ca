"""Datasets as whole uint8 tensors on the device; batches are normalised and augmented there.

Why: per-sample Python (a PIL image per `__getitem__`, a DataLoader worker per core) costs more
than the MLP itself on CPU. A split is one resident uint8 tensor, a batch is one index, and
augmentation is one gather over the batch (the airbench pattern).

Layouts read (the same ones torchvision downloads, so a torchvision folder works unchanged):
  <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}         (original CIFAR-10, preferred)
  <root>/cifar10-jpeg/cifar10-jpeg-q75.tar.gz                     (lossy JPEG stand-in)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdverify.errors import DataError
from kdverify.io import atomic_write_bytes

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

MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_NORM = ((0.5,), (0.5,))  # the blog's Normalize(0.5, 0.5)
CIFAR_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the tutorial's ImageNet statistics

HOW_TO_GET = (
    "point --data-root / KDVERIFY_DATA at a folder in torchvision's layout "
    "(e.g. torchvision.datasets.{name}(root, download=True) fills one)"
)


def default_cache_dir() -> Path:
    """Per-user cache (decoded datasets, trained models): KDVERIFY_CACHE, else XDG cache."""
    if os.environ.get("KDVERIFY_CACHE"):
        return Path(os.environ["KDVERIFY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdverify"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Data root from the argument, else KDVERIFY_DATA, else <cache>/data."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("KDVERIFY_DATA"):
        return Path(os.environ["KDVERIFY_DATA"]).expanduser()
    return default_cache_dir() / "data"


@dataclass(frozen=True)
class Split:
    """One split: images uint8 (N, C, H, W) and labels int64 (N,), both on one device."""

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


# ---------------------------------------------------------------- MNIST


def _read_idx(raw_dir: Path, name: str) -> np.ndarray:
    plain, packed = raw_dir / name, raw_dir / f"{name}.gz"
    try:
        if plain.is_file():
            payload = plain.read_bytes()
        elif packed.is_file():
            payload = gzip.decompress(packed.read_bytes())
        else:
            raise DataError(f"MNIST file {name}[.gz] not found in {raw_dir}; {HOW_TO_GET.format(name='MNIST')}")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"MNIST file {name} in {raw_dir} is unreadable ({exc}); replace it") from None
    digest = hashlib.md5(payload).hexdigest()
    if digest != MNIST_MD5[name]:
        raise DataError(f"MNIST file {name} in {raw_dir} fails its checksum (md5 {digest}, "
                        f"expected {MNIST_MD5[name]}); it is truncated or not canonical MNIST")
    ndim = payload[3]
    dims = np.frombuffer(payload, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(root: str | os.PathLike | None = None) -> Dataset:
    """Canonical MNIST (60,000 + 10,000), verified against the md5 of each uncompressed file."""
    raw_dir = resolve_data_root(root) / "MNIST" / "raw"
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


def _load_cifar_batches(folder: Path) -> tuple[Split, Split]:
    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 file {name} not found in {folder}; {HOW_TO_GET.format(name='CIFAR10')}")
        payload = path.read_bytes()
        if hashlib.md5(payload).hexdigest() != CIFAR_BATCH_MD5[name]:
            raise DataError(f"CIFAR-10 file {path} fails its md5 checksum; it is truncated or modified")
        batch = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
        return np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"], np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test = read("test_batch")
    to_split = lambda x, y: Split(torch.from_numpy(x), torch.from_numpy(y))  # noqa: E731
    return (to_split(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            to_split(*test))


def _decode_jpeg_tar(tar_path: Path) -> dict[str, np.ndarray]:
    """Decode every JPEG once (PIL, outside any training loop) into uint8 arrays."""
    from PIL import Image

    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    index = {name: i for i, name in enumerate(CIFAR_CLASSES)}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or not parts[2].endswith(".jpg"):
                continue
            split, cls, _ = parts
            with Image.open(tar.extractfile(member)) as img:
                images[split].append(np.asarray(img.convert("RGB"), np.uint8).transpose(2, 0, 1))
            labels[split].append(index[cls])
    return {f"{s}_{k}": np.stack(images[s]) if k == "x" else np.asarray(labels[s], np.int64)
            for s in ("train", "test") for k in ("x", "y")}


def _load_cifar_jpeg(tar_path: Path, cache_dir: Path) -> tuple[Split, Split]:
    digest = hashlib.md5(tar_path.read_bytes()).hexdigest()
    if digest != CIFAR_JPEG_MD5:
        raise DataError(f"{tar_path} fails its md5 checksum ({digest}, expected {CIFAR_JPEG_MD5})")
    cached = cache_dir / f"cifar10-jpeg-q75-{digest[:12]}.npz"
    arrays = None
    if cached.is_file():
        try:
            with np.load(cached) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            arrays = None  # a corrupted cache is rebuilt, never trusted
    if arrays is None or arrays.get("train_x", np.empty(0)).shape != (50000, 3, 32, 32):
        arrays = _decode_jpeg_tar(tar_path)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(cached, buffer.getvalue())
    split = lambda s: Split(torch.from_numpy(arrays[f"{s}_x"]), torch.from_numpy(arrays[f"{s}_y"]))  # noqa: E731
    return split("train"), split("test")


def load_cifar10(root: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Dataset:
    """Original CIFAR-10 when present, else the JPEG q75 stand-in (decoded once into the cache)."""
    base = resolve_data_root(root)
    original, jpeg = base / "cifar-10-batches-py", base / CIFAR_JPEG_TAR
    if original.is_dir():
        train, test = _load_cifar_batches(original)
        variant, checksum = "cifar10", hashlib.sha256("".join(CIFAR_BATCH_MD5.values()).encode()).hexdigest()[:16]
    elif jpeg.is_file():
        train, test = _load_cifar_jpeg(jpeg, cache_dir or default_cache_dir())
        variant, checksum = "cifar10-jpeg-q75", CIFAR_JPEG_MD5[:16]
    else:
        raise DataError(f"CIFAR-10 not found: looked for {original}/ and {jpeg}; {HOW_TO_GET.format(name='CIFAR10')}")
    return Dataset("cifar10", variant, checksum, CIFAR_CLASSES, *CIFAR_NORM, train, test)


LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, root: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu") -> Dataset:
    """Load a dataset by name and move both splits onto `device` once."""
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    return LOADERS[name](root).to(device)


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
    n = len(split) - size
    return split.take(torch.arange(n, device=split.labels.device)), \
        split.take(torch.arange(n, len(split), device=split.labels.device))


def balanced_subset(split: Split, size: int, num_classes: int, seed: int = 0) -> Split:
    """A fixed, class-balanced subset: `size // num_classes` examples of each class."""
    per_class = size // num_classes
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen).to(split.labels.device)
    labels = split.labels[order]
    picked = [order[labels == c][:per_class] for c in range(num_classes)]
    return split.take(torch.cat(picked).sort().values)


# ---------------------------------------------------------------- batched, on-device augmentation


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32, (x/255 - mean) / std as one scale and one shift per channel."""
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
        """The variants `ids` of `images` (uint8 or float, (B, C, H, W))."""
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


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (index, uint8 images, labels) batches of one epoch; the shuffle is one randperm."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield idx, split.images[idx], split.labels[idx]
