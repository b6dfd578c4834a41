"""Run directories: metrics store (SQLite), checkpoints, PEFT adapters, plots, summaries."""

from fedintel.tracking.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fedintel.tracking.store import MetricsStore

__all__ = ["MetricsStore", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
