"""Pinned paper-level teachers: kdverify's own checkpoints, shipped as package data.

The `ci` budget distils from these instead of retraining them (the CIFAR teacher alone is most
of an hour of 2 CPU cores). They were trained from scratch by the `paper` budget's recipes, and
`teachers/manifest.json` records how: recipe and fingerprint, trainer version, sha256, test
errors, training time, machine, torch version. Loading checks the sha256 and that the recipe
has not changed since pinning; either mismatch is a one-line error, never a silent substitute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kdverify.cache.checkpoint import Checkpoint, load_checkpoint, state_digest
from kdverify.cache.manifest import MANIFEST, read_manifest
from kdverify.errors import CheckpointError, KdverifyError
from kdverify.io import atomic_write_bytes, describe_os_error
from kdverify.paths import TEACHERS_DIR
from kdverify.train.recipes import Recipe


def is_pinned(recipe_name: str, folder: Path = TEACHERS_DIR) -> bool:
    return recipe_name in read_manifest(folder)


def load_pinned(recipe: Recipe, device: torch.device | str = "cpu", folder: Path = TEACHERS_DIR) -> Checkpoint:
    """The pinned checkpoint of `recipe`, verified against the manifest (sha256 and recipe fingerprint)."""
    manifest = read_manifest(folder)
    entry = manifest.get(recipe.name)
    if entry is None:
        raise KdverifyError(f"no pinned teacher for {recipe.name!r}; pinned: {', '.join(manifest) or 'none'}")
    path = folder / entry["file"]
    ckpt = load_checkpoint(path, map_location=device)  # format 2, accepted for its sha256 in the manifest
    if ckpt.sha256 != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 {ckpt.sha256[:16]} does not match the manifest's "
                              f"{entry['sha256'][:16]}: the pinned teacher was altered (reinstall kdverify)")
    if entry["fingerprint"] != recipe.fingerprint():
        raise KdverifyError(f"pinned teacher {recipe.name} was trained with recipe {entry['fingerprint']}, but the "
                            f"fast recipe is now {recipe.fingerprint()}: train it with --kd-budget paper and re-pin "
                            f"it (`kdverify pin`)")
    return ckpt


def pin_teacher(checkpoint: str | os.PathLike, recipe: Recipe, trainer_version: str, machine: str,
                folder: Path = TEACHERS_DIR, force: bool = False) -> dict[str, Any]:
    """Copy a trained checkpoint into `folder` as `<recipe>.pt` and record it in the manifest."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.recipe.get("name") != recipe.name:
        raise KdverifyError(f"{checkpoint} was trained by recipe {ckpt.recipe.get('name')!r}, not {recipe.name!r}")
    stored = Recipe.from_dict(ckpt.recipe)
    if stored.fingerprint() != recipe.fingerprint():
        raise KdverifyError(f"{checkpoint} was trained with recipe {stored.fingerprint()}, but {recipe.name}'s fast "
                            f"recipe is {recipe.fingerprint()}")
    manifest = read_manifest(folder)
    if recipe.name in manifest and not force:
        raise KdverifyError(f"{recipe.name} is already pinned; pass --force to replace it")
    target = folder / f"{recipe.name}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, Path(checkpoint).read_bytes())
    except OSError as exc:
        raise KdverifyError(f"cannot pin into {folder}: {describe_os_error(exc)}") from None
    test = ckpt.metrics.get("test", {})
    manifest[recipe.name] = {
        "file": target.name, "sha256": ckpt.sha256, "weights_sha256": state_digest(ckpt.model),
        "recipe": recipe.to_dict(), "fingerprint": recipe.fingerprint(), "trainer_version": trainer_version,
        "test_errors": test.get("errors"), "test_total": test.get("total"), "data_variant": ckpt.dataset_variant,
        "train_seconds": round(float(ckpt.metrics.get("train_seconds", 0.0)), 1), "machine": machine,
        "torch": ckpt.versions.get("torch"), "kdverify": ckpt.versions.get("kdverify"),
    }
    try:
        atomic_write_bytes(folder / MANIFEST, (json.dumps({"teachers": manifest}, indent=2) + "\n").encode())
    except OSError as exc:
        raise KdverifyError(f"cannot write {folder / MANIFEST}: {describe_os_error(exc)}") from None
    return manifest[recipe.name]
