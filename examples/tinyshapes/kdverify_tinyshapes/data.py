"""CIFAR-10 at 16x16, 10,000 training images: a dataset of the user's own, registered from plain tensors.

Built from kdverify's CIFAR-10 (the original, or the lossy JPEG stand-in) with `Dataset.from_tensors`,
which checks the tensors and derives classes, normalisation and the checksum that keys the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdverify.data import Dataset, balanced_subset, load_dataset

TRAIN_SIZE = 10_000


def _downsample(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> uint8 (N, 3, 16, 16) by 2x2 averaging."""
    return F.avg_pool2d(images.float(), 2).round().to(torch.uint8)


def load_cifar10_16px(root=None) -> Dataset:  # noqa: ANN001 - kdverify's loader signature: loader(root)
    full = load_dataset("cifar10", root)
    train = balanced_subset(full.train, TRAIN_SIZE, len(full.classes), seed=0)
    return Dataset.from_tensors("cifar10-16px", _downsample(train.images), train.labels,
                                _downsample(full.test.images), full.test.labels, classes=full.classes,
                                variant=f"{full.variant}-16px-{TRAIN_SIZE // 1000}k")
