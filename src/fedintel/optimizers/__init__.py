"""Federated optimizers: the server's step on the aggregated delta and the clients' local terms.

One module per algorithm, each registered with its own config class (:func:`register_optimizer`); the
experiment file picks one with ``optimizer: {name: ..., <knobs>}``. Built in: ``fedavg`` (the default),
``fedprox``, ``scaffold``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "build_optimizer": "builtin",
    "config_class": "builtin",
    "FederatedOptimizer": "base",
    "LocalTerm": "base",
    "OptimizerConfig": "base",
    "parse_optimizer_config": "builtin",
    "register_optimizer": "builtin",
    "registered": "builtin",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
