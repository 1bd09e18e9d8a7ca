"""The pinned teachers' manifest (`teachers/manifest.json`): recipe name -> file, sha256, recipe fingerprint,
weights, machine. Read apart from loading checkpoints (no torch), so that checkpoints, the cache and plans can ask
whether a file or a recipe is pinned without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdverify.errors import KdverifyError
from kdverify.paths import TEACHERS_DIR

MANIFEST = "manifest.json"
MANIFEST_FIELDS = ("file", "sha256", "fingerprint")  # what loading a pinned teacher reads


def read_manifest(folder: Path = TEACHERS_DIR) -> dict[str, dict[str, Any]]:
    """recipe name -> manifest entry; {} when nothing is pinned."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        teachers = json.loads(path.read_text())["teachers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KdverifyError(f"{path} is not a readable teacher manifest: {exc}") from None
    for name, entry in teachers.items() if isinstance(teachers, dict) else []:
        missing = [k for k in MANIFEST_FIELDS if not isinstance(entry, dict) or not isinstance(entry.get(k), str)]
        if missing:
            raise KdverifyError(f"{path}: entry {name!r} lacks {', '.join(missing)}: the manifest was edited or "
                                "truncated (reinstall kdverify)")
    if not isinstance(teachers, dict):
        raise KdverifyError(f"{path} is not a readable teacher manifest: 'teachers' is not a mapping")
    return teachers
