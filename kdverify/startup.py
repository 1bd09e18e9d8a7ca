"""What every entry point (the CLI, the pytest plugin, a Ray task) does before it runs anything: import the
user's modules, register recipe files, pick the device. One place, so the three agree and fail alike.

Torch-free at import (the pytest plugin loads in every pytest run of the environment); each failure is one
KdverifyError line that the caller turns into its own kind of error (exit 2, a pytest UsageError).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING, Iterable

from kdverify.errors import KdverifyError, first_line

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def import_user_modules(names: Iterable[str], search: str | os.PathLike | None = None, how: str = "--import") -> None:
    """Import the user's modules so they can register models, datasets and recipes before anything looks them up.

    `search` (the current directory, pytest's rootdir) joins sys.path only when a module is named, and last:
    nothing in it runs unless named, and a stray ./onnx.py or ./tomllib.py never shadows the library of that name.
    """
    names = list(dict.fromkeys(names))
    if names and search is not None and str(search) not in sys.path:
        sys.path.append(str(search))
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise KdverifyError(f"cannot import module {name!r} ({how}): "
                                f"{str(exc).strip() or type(exc).__name__}") from None
        except Exception as exc:  # noqa: BLE001 - the user's module: one line naming where it failed
            raise KdverifyError(f"importing module {name!r} ({how}) failed{_where(exc)}: {type(exc).__name__}"
                                f"{': ' + first_line(exc) if str(exc).strip() else ''}") from None


def _where(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def load_recipe_files(paths: Iterable[str | os.PathLike]) -> None:
    """Register the recipes of each TOML file (one [table] per recipe); the error starts with the file's path."""
    for path in paths:
        from kdverify.train.recipe_file import load_recipe_file  # torch: only when a file is named

        try:
            load_recipe_file(path)
        except (KdverifyError, OSError, ValueError) as exc:
            text = first_line(exc)
            raise KdverifyError(text if text.startswith(str(path)) else f"{path}: {text}") from None


def resolve_device(name: str = "auto", worker: int = 0) -> "torch.device":
    """'auto' is CUDA when present, else the CPU; 'cuda' on a machine with several GPUs is cuda:(worker mod n), so
    pytest-xdist workers spread over them; anything else must name a device this machine has."""
    import torch

    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name)
    if not match:
        raise KdverifyError(f"unknown device {name!r}; use {DEVICE_CHOICES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KdverifyError(f"--device {name} asked for, but torch sees no CUDA device")
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise KdverifyError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        if name == "cuda" and count > 1:
            name = f"cuda:{worker % count}"
    return torch.device(name)
