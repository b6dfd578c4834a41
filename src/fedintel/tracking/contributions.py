"""Stored client contributions (``output.save_client_updates``): every accepted update of a round, on disk.

Approximate unlearning (:mod:`fedintel.unlearning.forget`) reads them back to subtract one client's
contributions; the run loop writes them, one file per round.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedintel.types import Update

UPDATES_DIR = "client_updates"
_UPDATE_FIELDS = ("client_id", "num_samples", "base_version", "train_loss", "steps", "tokens", "flops")


# -- stored contributions (output.save_client_updates) -------------------------------------------------
def contributions_path(run_dir: Path, round_idx: int) -> Path:
    """``RUN_DIR/client_updates/round_00003.pt``: the accepted updates of one round."""
    return Path(run_dir) / UPDATES_DIR / f"round_{round_idx:05d}.pt"


def save_contributions(run_dir: Path, round_idx: int, aggregations: Sequence[dict[str, Any]]) -> Path:
    """Write one round's aggregations atomically (temporary file, fsync, rename).

    Each aggregation is ``{"reference": AdapterState, "updates": [Update], "delta": AdapterState}``: the
    adapter the updates were aggregated onto, the accepted updates as received, and the applied delta.
    A round recomputed after a resume overwrites its file with identical content.
    """
    payload = {
        "round": round_idx,
        "aggregations": [
            {
                "reference": dict(a["reference"]),
                "delta": dict(a["delta"]),
                "updates": [
                    {**{f: getattr(u, f) for f in _UPDATE_FIELDS}, "delta": dict(u.delta), "metrics": dict(u.metrics)}
                    for u in a["updates"]
                ],
            }
            for a in aggregations
        ],
    }
    path = contributions_path(run_dir, round_idx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_contributions(run_dir: Path, round_idx: int) -> list[dict[str, Any]]:
    """One round's aggregations as saved by :func:`save_contributions`, with updates as :class:`Update`."""
    path = contributions_path(run_dir, round_idx)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the run did not keep client updates (output.save_client_updates: true), "
            "which approximate unlearning needs; use --method exact"
        )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return [
        {
            "reference": a["reference"],
            "delta": a["delta"],
            "updates": [Update(delta=u["delta"], metrics=u["metrics"], **{f: u[f] for f in _UPDATE_FIELDS})
                        for u in a["updates"]],
        }
        for a in raw["aggregations"]
    ]
