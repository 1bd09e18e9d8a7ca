"""Shared test fixtures: small synthetic datasets made in memory, so unit tests need no data root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kdverify.data import MNIST_CLASSES, MNIST_NORM, Dataset, Split

pytest_plugins = ["pytester"]

UNIT_TEST_THREADS = "1"


@pytest.fixture(autouse=True)
def one_torch_thread_outside_the_claims(request):
    """Unit tests train toy models, where a second intra-op thread buys nothing and, on a machine with other
    work (pytest-xdist workers, a background training), costs up to 20x in threads waiting for a core. So one
    thread here and in the processes these tests start (OMP_NUM_THREADS). Claims keep the machine's threads:
    their numbers are read beside reference samples recorded at a thread count."""
    if request.node.get_closest_marker("claims") or "claims" in request.node.path.parts:
        yield
        return
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(int(UNIT_TEST_THREADS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", UNIT_TEST_THREADS)
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)  # an in-process `--kd-deterministic` session set it for good


def pytest_collection_modifyitems(items):
    """Tests that start processes first (stable: everything else keeps its order), so that under pytest-xdist the
    long ones start at once and the many short ones fill in behind them, rather than one long test running alone
    at the end."""
    items.sort(key=lambda item: item.get_closest_marker("processes") is None)


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


@pytest.fixture(scope="session", autouse=True)
def optimizer_modules_loaded():
    """An optimizer's first step imports torch submodules (dynamo's) that register torch ops. Loaded before any
    pytester fixture takes its snapshot of sys.modules, they stay loaded: pytester would drop them after its test,
    and training in a later test (tests/ray_support.train_in_this_process) would import them again and register the
    same ops twice."""
    with torch.random.fork_rng(devices=[]):  # leaves the global generator as it was
        model = torch.nn.Linear(2, 2)
        for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                          torch.optim.Adam(model.parameters())):
            model(torch.ones(1, 2)).sum().backward()
            optimizer.step()


@pytest.fixture(scope="session")
def tiny_mnist() -> Dataset:
    """2,000 train / 500 test synthetic 28x28 images with MNIST's shape and normalisation."""
    return Dataset("mnist", "synthetic", "synthetic-0", MNIST_CLASSES, *MNIST_NORM,
                   make_pattern_split(2000, 0), make_pattern_split(500, 1))


@pytest.fixture(autouse=True)
def registries_restored():
    """What a test registers (recipes, datasets, architectures, objectives, metrics, dataset shapes) is gone after
    it: every registry is put back as it was, so no test needs to swap a module's registry for a copy."""
    from kdverify.claims.core import METRIC_DEFINITIONS
    from kdverify.data import DATASET_SHAPES
    from kdverify.registry import Registry

    saved = [(registry, registry.snapshot()) for registry in Registry.instances()]
    tables = [(table, dict(table)) for table in (DATASET_SHAPES, METRIC_DEFINITIONS)]
    yield
    for registry, snapshot in saved:
        registry.restore(snapshot)
    for table, contents in tables:
        table.clear()
        table.update(contents)


@pytest.fixture
def tiny_pytester(pytester, monkeypatch):
    """A pytester folder holding tests/tiny_project.py for a run's `--kd-import tiny_project`. An in-process run
    imports it afresh: the copy an earlier test imported from tests/ is out of sys.modules for this test (its
    registrations were removed after that test, and importing a module already imported does nothing)."""
    monkeypatch.delitem(sys.modules, "tiny_project", raising=False)
    pytester.makepyfile(tiny_project=(Path(__file__).parent / "tests" / "tiny_project.py").read_text())
    return pytester


@pytest.fixture
def tiny_registered(registries_restored):
    """tiny_project's dataset and recipes, registered for one test (and removed after it by registries_restored)."""
    import importlib

    import tiny_project

    importlib.reload(tiny_project)
    yield
