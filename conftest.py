"""Shared test fixtures: small synthetic datasets made in memory, so unit tests need no data root."""

from __future__ import annotations

import pytest
import torch

from kdverify.data import MNIST_CLASSES, MNIST_NORM, Dataset, Split

pytest_plugins = ["pytester"]


def make_pattern_split(n: int, seed: int, channels: int = 1, size: int = 28) -> Split:
    """Learnable images: class c lights a 6x6 square at a position of its own, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.randint(0, 60, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    for c in range(10):
        row, col = 2 + (c // 5) * 12, 2 + (c % 5) * 5
        images[labels == c, :, row:row + 6, col:col + 4] = 255
    return Split(images, labels)


@pytest.fixture(scope="session")
def tiny_mnist() -> Dataset:
    """2,000 train / 500 test synthetic 28x28 images with MNIST's shape and normalisation."""
    return Dataset("mnist", "synthetic", "synthetic-0", MNIST_CLASSES, *MNIST_NORM,
                   make_pattern_split(2000, 0), make_pattern_split(500, 1))


@pytest.fixture
def tiny_registered():
    """tiny_project's dataset and recipes, registered for one test and removed after it."""
    import importlib

    from kdverify import data, recipes

    saved = dict(data.LOADERS), dict(recipes.RECIPES)
    import tiny_project

    importlib.reload(tiny_project)
    yield
    for registry, before in zip((data.LOADERS, recipes.RECIPES), saved):
        registry.clear()
        registry.update(before)
