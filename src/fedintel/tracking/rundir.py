"""One process at a time per run directory, and the user error for a run directory that cannot be used.

``run``, ``resume`` and ``forget`` hold an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` while they work, so
two of them never interleave checkpoints and metrics. The operating system drops the lock when the process
ends, even on SIGKILL, so a killed run never leaves a stale lock behind. POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedintel.errors import FedintelError

LOCK_NAME = ".lock"


class RunDirError(FedintelError, RuntimeError):
    """A run directory cannot be used as asked (locked, no readable checkpoint, damaged store); one line."""


@contextmanager
def run_lock(run_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if needed); :class:`RunDirError` if another process has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunDirError(f"{run_dir} is in use by {holder}; wait for it to end (cannot {purpose} it now)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({purpose})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
