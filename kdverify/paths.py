"""Where kdverify reads and writes, and the environment variables that move it: the one place that knows.

Torch-free, so the CLI, the pytest plugin and the benchmarks ask it without loading a model stack.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "KDVERIFY_DATA"  # the data root (torchvision's layout)
CACHE_ENV = "KDVERIFY_CACHE"  # decoded datasets, trained models, rescued checkpoints
IMPORT_ENV = "KDVERIFY_IMPORT"  # comma-separated modules that register a user's models, datasets, recipes

PACKAGE_DIR = Path(__file__).resolve().parent
TEACHERS_DIR = PACKAGE_DIR / "teachers"  # the pinned paper-level teachers and their manifest (shipped in the wheel)
REFERENCE_DIR = PACKAGE_DIR / "references"  # the reference samples of every numeric path measured (shipped too)


def cache_dir() -> Path:
    """Per-user cache: $KDVERIFY_CACHE, else $XDG_CACHE_HOME/kdverify, else ~/.cache/kdverify."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdverify"


def model_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The trained-model cache: the given folder (--kd-cache), else <cache>/models."""
    return Path(override).expanduser() if override else cache_dir() / "models"


def rescue_dir() -> Path:
    """Where a trained model goes when its --out cannot be written (nothing trained is thrown away)."""
    return cache_dir() / "rescued"


def named_data_root(option: str | os.PathLike | None = None) -> str | None:
    """The data root the user named (an option, else $KDVERIFY_DATA), or None: naming one makes missing data
    a failure instead of a skip."""
    return str(option) if option else os.environ.get(DATA_ENV) or None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $KDVERIFY_DATA, else <cache>/data."""
    named = named_data_root(root)
    return Path(named).expanduser() if named else cache_dir() / "data"


def how_data_was_named(option: str | None, option_name: str = "--data-root") -> str | None:
    """'--data-root' or '$KDVERIFY_DATA' (for messages), or None when no data root was named."""
    if option:
        return option_name
    return f"${DATA_ENV}" if os.environ.get(DATA_ENV) else None


def imports_from_env() -> list[str]:
    """The modules $KDVERIFY_IMPORT names."""
    return [n.strip() for n in os.environ.get(IMPORT_ENV, "").split(",") if n.strip()]
