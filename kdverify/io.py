"""Paths and atomic writes: one implementation for checkpoints, datasets, exports and reports.

A file is written to a hidden temporary beside its destination and renamed into place, so a
reader never sees half a file and a crash leaves the previous version intact. Finished files get
ordinary permissions (0666 minus the umask, like any other file), not `mkstemp`'s 0600.
Temporaries left behind by a killed writer carry the writer's pid, so later writers can remove
exactly the ones whose owner is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from kdverify.errors import KdverifyError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def clean_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporaries of `final` left by writers that no longer run (SIGKILL, power loss)."""
    removed = []
    try:
        candidates = list(final.parent.glob(f".{final.name}.*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(final.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def temp_beside(final: Path) -> Iterator[Path]:
    """An empty temporary file beside `final` (same filesystem, so the rename is atomic), with
    ordinary permissions; removed on exit unless the caller renamed it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=temp_prefix(final), suffix=TMP_SUFFIX)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write `payload` to `path` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with temp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def describe_os_error(exc: OSError) -> str:
    """'No space left on device' rather than '[Errno 28] ...: /path/.x.123.tmp' (temp names mean nothing to users)."""
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Before any work is done, a one-line KdverifyError when the destination exists (without force),
    is a folder, or its folder is missing or not writable."""
    path = Path(path)
    if path.is_dir():
        raise KdverifyError(f"{path} is a directory")
    if path.exists() and not force:
        raise KdverifyError(f"{path} exists; pass --force to overwrite it")
    if path.exists() and not path.is_file():
        raise KdverifyError(f"{path} is not a regular file (a device, socket or pipe): never replaced, even with "
                            "--force")
    if not path.parent.is_dir():
        raise KdverifyError(f"output folder {path.parent} does not exist")
    try:
        with temp_beside(path):
            pass
    except OSError as exc:
        raise KdverifyError(f"cannot write to {path.parent}: {describe_os_error(exc)}") from None
    return path
