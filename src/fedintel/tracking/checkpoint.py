"""Atomic checkpoints: written to a temporary file, fsynced, then renamed over the final name.

A run killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain values only, so a checkpoint
file can never run code (a pickled object is refused like a damaged file).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"round_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, round_idx: int) -> Path:
    return run_dir / "checkpoints" / f"round_{round_idx:05d}.pt"


def save_checkpoint(run_dir: Path, round_idx: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors and plain values) as the checkpoint after ``round_idx``."""
    path = checkpoint_path(run_dir, round_idx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"round": round_idx, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (run_dir / "checkpoints").glob("round_*.pt"):
        m = _NAME.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint (a damaged newest file falls back to the one before, with a warning)."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except Exception as err:  # a damaged (or code-carrying) file: try the previous one
            log.warning("checkpoint %s is unreadable (%s: %s); falling back to the one before",
                        path, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            continue
    return None
