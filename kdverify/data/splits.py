"""Split and Dataset: whole uint8 tensors (or float features) and labels on one device, with the checksum that
identifies their bytes in every cache key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from kdverify.errors import DataError


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
