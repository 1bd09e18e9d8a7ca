"""Inter-process locks around cache fills, so N processes sharing a cache do each piece of work once.

Built on `filelock` (kernel `flock` locks): a lock dies with its process, so a holder killed
with SIGKILL never blocks the next run. While waiting, the waiter says who holds the lock and
since when (written by the holder into a small sidecar file). On NFS, `flock` works only where
the server and clients support it (NFSv4, or v3 with lockd); see the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

POLL_SECONDS = 30.0  # how often a waiter says it is still waiting


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _holder_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.holder")


def _describe_holder(target: Path) -> str:
    try:
        info = json.loads(_holder_path(target).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str = "",
              say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of `target` (a cache file) for the block; wait, saying who holds it, if taken."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(target))
    started = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=POLL_SECONDS if say else -1)
            break
        except Timeout:
            if say:
                say(f"waiting for {what or target.name}: held by {_describe_holder(target)} "
                    f"({time.monotonic() - started:.0f} s so far)")
    try:
        with contextlib.suppress(OSError):
            _holder_path(target).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                         "since": time.time()}))
        yield
    finally:
        lock.release()
