"""One client's local training loop and evaluation.

The names load lazily so that light modules (``fedintel.training.flops``) import without torch.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "LocalTrainSpec": "client",
    "TrainingDiverged": "client",
    "train_local": "client",
    "evaluate": "evaluate",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
