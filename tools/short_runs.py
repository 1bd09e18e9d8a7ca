"""Weights sha256 of a 1-epoch, 2000-image, deterministic run of every built-in recipe (both tables): a refactor must
leave them bit-identical. PYTHONPATH=<tree> python tools/short_runs.py DATA_ROOT > out.txt, for two trees; diff."""
import dataclasses
import sys

import kdverify
from kdverify.cache.checkpoint import state_digest
from kdverify.cache.pinned import load_pinned
from kdverify.data import load_dataset
from kdverify.train.determinism import set_deterministic
from kdverify.train.loop import fit
from kdverify.train.recipes import RECIPES, get_recipe

set_deterministic()
print("tree", kdverify.__file__, file=sys.stderr)
datasets = {}
for budget in ("ci", "original"):
    for name in sorted(RECIPES):
        recipe = get_recipe(name, budget)
        short = dataclasses.replace(recipe, epochs=1, train_subset=2000, holdout=200 if recipe.holdout else 0)
        root = sys.argv[1] if len(sys.argv) > 1 else None
        ds = datasets.setdefault(recipe.dataset, load_dataset(recipe.dataset, root))
        teacher = load_pinned(get_recipe(recipe.teacher, "ci")).model if recipe.teacher else None
        result = fit(short, ds, teacher=teacher, progress=None)
        print(f"{budget:8} {name:28} {state_digest(result.model)}", flush=True)
