"""Run directories: metrics store (SQLite), checkpoints, stored client contributions, PEFT adapters, plots.

The end-of-run summary table is printed by :mod:`fedintel.summary` from the metrics store.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "latest_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "MetricsStore": "store",
    "save_checkpoint": "checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
