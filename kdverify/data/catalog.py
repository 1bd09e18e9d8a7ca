"""Datasets by name: `register_dataset(name, loader)`, `load_dataset(name)`; the built-ins register here too."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from kdverify.data.cifar import CIFAR_CLASSES, CIFAR_IMAGE_SHAPE, load_cifar10
from kdverify.data.mnist import MNIST_CLASSES, MNIST_IMAGE_SHAPE, load_mnist
from kdverify.data.splits import Dataset
from kdverify.errors import DataError
from kdverify.registry import Registry, UnknownName, describe

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
