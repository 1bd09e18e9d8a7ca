"""A user's own project in miniature: a synthetic dataset and tiny recipes, registered on import.

Used by tests that run kdverify in other processes (pytest-xdist workers, concurrent caches, the CLI).
"""

import torch

from kdverify import data
from kdverify.data import Dataset, Split
from kdverify.train.recipes import Recipe, register_recipe


def _split(n, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    for c in range(10):
        images[labels == c, :, 2 + (c // 5) * 12:8 + (c // 5) * 12, 2 + (c % 5) * 5:6 + (c % 5) * 5] = 255
    return Split(images, labels)


def load_tiny(root=None):
    return Dataset("tiny", "tiny-synthetic", "tiny-0", tuple(map(str, range(10))), (0.5,), (0.5,),
                   _split(600, 0), _split(200, 1))


data.register_dataset("tiny", load_tiny, replace=True)
MLP = dict(hidden=16)
register_recipe(Recipe("tiny-teacher", "tiny", "hinton_mlp", epochs=3, lr=0.05, arch_kwargs=MLP), replace=True)
register_recipe(Recipe("tiny-hard", "tiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP, seed=1),
                replace=True)
for i in range(3):
    register_recipe(Recipe(f"tiny-kd-{i}", "tiny", "hinton_mlp", epochs=2, lr=0.05, arch_kwargs=MLP,
                           objective="kd", teacher="tiny-teacher", temperature=4.0, soft_weight=0.7, seed=i),
                    replace=True)
