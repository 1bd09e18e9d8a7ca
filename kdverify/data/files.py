"""Reading data files: one-line errors that say what is wrong and how to fix it, never a traceback."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from kdverify.errors import DataCorrupt

HOW_TO_GET = (
    "point --data-root / KDVERIFY_DATA at a folder in torchvision's layout "
    "(e.g. torchvision.datasets.{name}(root, download=True) fills one)"
)
REDOWNLOAD = "delete it and download it again (torchvision.datasets.{name}(root, download=True) does)"


def say(message: str) -> None:
    print(f"kdverify: {message}", file=sys.stderr, flush=True)


def reason(exc: BaseException) -> str:
    """The first line of an exception, for one-line errors (zlib and zipfile messages can run long)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_bytes(path: Path, fix: str) -> bytes:
    """A file that is there but cannot be read (permissions, I/O error) is corrupt, not missing."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataCorrupt(f"cannot read {path} ({reason(exc)}); {fix}") from None


def md5_file(path: Path, fix: str) -> str:
    """md5 in 1 MiB chunks, so a large archive is never held in memory just to be hashed."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataCorrupt(f"cannot read {path} ({reason(exc)}); {fix}") from None
    return digest.hexdigest()
