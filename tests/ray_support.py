"""What the Ray tests share: a tiny project of recipes and models (some raise, die or are slow), its claims, and
a pytester folder with its own short RAY_TMPDIR."""

import tempfile
import time
from pathlib import Path

PROJECT = '''
import os
import sys

from kdverify import data
from kdverify.data import Dataset
from kdverify.train.models import HintonMLP, register_model
from kdverify.train.recipes import Recipe, register_recipe
from tiny_project import _split  # the tiny synthetic images of tests/tiny_project.py


def _on_a_ray_worker():
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray._private.worker.global_worker.mode == ray.WORKER_MODE


class Raising(HintonMLP):
    def forward(self, x):
        raise RuntimeError("boom in forward")


class DiesOnce(HintonMLP):
    """Kills its worker the first time it runs on one (a node lost mid-task), then trains normally."""

    def forward(self, x):
        mark = os.path.join(os.environ["RAY_TEST_MARKS"], "died-once")
        if _on_a_ray_worker() and not os.path.exists(mark):
            open(mark, "w").close()
            os._exit(1)
        if _on_a_ray_worker():  # the retry: how the worker was scheduled
            with open(os.path.join(os.environ["RAY_TEST_MARKS"], "niceness"), "w") as f:
                f.write(str(os.nice(0)))
        return super().forward(x)


class Slow(HintonMLP):
    def forward(self, x):
        if _on_a_ray_worker():
            import time
            open(os.path.join(os.environ["RAY_TEST_MARKS"], "slow-running"), "w").close()
            time.sleep(0.5)
        return super().forward(x)


class AlwaysDies(HintonMLP):
    def forward(self, x):
        if _on_a_ray_worker():
            os._exit(1)
        return super().forward(x)


data.register_dataset("raytiny", lambda root=None: Dataset("raytiny", "raytiny-synthetic", "raytiny-0",
                      tuple(map(str, range(10))), (0.5,), (0.5,), _split(600, 0), _split(200, 1)), replace=True)
for name, cls in (("raising_mlp", Raising), ("dies_once_mlp", DiesOnce), ("always_dies_mlp", AlwaysDies),
                  ("slow_mlp", Slow)):
    register_model(name, cls, replace=True)
MLP = dict(hidden=16)
register_recipe(Recipe("raytiny-teacher", "raytiny", "hinton_mlp", epochs=3, lr=0.05, arch_kwargs=MLP), replace=True)
register_recipe(Recipe("raytiny-kd", "raytiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP, objective="kd",
                       teacher="raytiny-teacher", temperature=4.0, soft_weight=0.7), replace=True)
# a pair whose teacher a test puts in the cache before the Ray run: it travels to its student's task from there
register_recipe(Recipe("raytiny-cached-teacher", "raytiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP),
                replace=True)
register_recipe(Recipe("raytiny-cached-kd", "raytiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP,
                       objective="kd", teacher="raytiny-cached-teacher", temperature=4.0, soft_weight=0.7),
                replace=True)
for arch in ("raising_mlp", "dies_once_mlp", "always_dies_mlp", "slow_mlp"):
    register_recipe(Recipe(arch.replace("_mlp", ""), "raytiny", arch, epochs=1, lr=0.05, arch_kwargs=MLP),
                    replace=True)
'''

CLAIMS = '''
import pytest

from kdverify.claims.core import Claim, Threshold

def claim(id, recipe):
    return Claim(id, "test", id, "errors_on_test", {"recipe": recipe}, None, "errors", Threshold("<=", 10_000))

SLOW = [claim("ray.slow", "slow")]
CLAIMS = [claim("ray.kd", "raytiny-kd"), claim("ray.teacher", "raytiny-teacher"), claim("ray.raising", "raising"),
          claim("ray.dies_once", "dies_once"), claim("ray.always_dies", "always_dies"),
          claim("ray.cached_kd", "raytiny-cached-kd")]

@pytest.mark.claims
@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.id)
def test_claim(claim, kd_claim):
    kd_claim(claim)


@pytest.mark.claims
@pytest.mark.parametrize("claim", SLOW, ids=lambda c: c.id)
def test_slow(claim, kd_claim):
    kd_claim(claim)
'''


def train_in_this_process(pytester, cache, names, deterministic=False):
    """What a local pytest session would put in `cache` for these recipes, trained here instead of in another
    process: the same keys and weights (a session's cache is this ModelCache), without a second torch import."""
    import importlib
    import sys

    import torch

    from kdverify.cache.spec import resolve
    from kdverify.cache.store import ModelCache
    from kdverify.data import load_dataset
    from kdverify.train import determinism

    sys.path.insert(0, str(pytester.path))
    try:
        sys.modules.pop("ray_project", None)  # an earlier test's copy: its registrations were removed after it
        importlib.import_module("ray_project")
        if deterministic:
            determinism.set_deterministic()
        models = ModelCache(cache, {"raytiny": load_dataset("raytiny")}, "paper", progress=None)
        return {name: models.get(resolve(name, "paper")) for name in names}
    finally:
        sys.path.remove(str(pytester.path))
        torch.use_deterministic_algorithms(False)  # the threads come back with the conftest's fixture


def make_ray_project(pytester, tmp_path, monkeypatch):
    pytester.makepyfile(ray_project=PROJECT, test_ray=CLAIMS,
                        tiny_project=(Path(__file__).parent / "tiny_project.py").read_text())
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("RAY_TEST_MARKS", str(marks))
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    ray_tmp = Path(tempfile.mkdtemp(prefix="kdray", dir="/tmp"))  # short: Ray's unix sockets live under it
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return pytester, ray_tmp


def read_until(proc, marker: str, timeout: float = 240) -> str:
    """A session's output up to the line with `marker` (or all of it, if it ended or the time ran out first)."""
    seen, deadline = "", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
    return seen
