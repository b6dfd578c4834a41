"""Federated optimizers: the server's step on the aggregated delta and the clients' local terms.

One module per algorithm, each registered with its own config class (:func:`register_optimizer`); the
experiment file picks one with ``optimizer: {name: ..., <knobs>}``. Built in: ``fedavg`` (the default),
``fedprox``, ``scaffold``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``.
"""

# Importing the algorithm modules registers them by name.
from fedintel.optimizers import fedadagrad, fedadam, fedavg, fedavgm, fedprox, fedyogi, scaffold  # noqa: F401
from fedintel.optimizers.base import FederatedOptimizer, LocalTerm, OptimizerConfig
from fedintel.optimizers.registry import (
    build_optimizer,
    config_class,
    parse_optimizer_config,
    register_optimizer,
    registered,
)

__all__ = [
    "FederatedOptimizer", "LocalTerm", "OptimizerConfig", "build_optimizer", "config_class",
    "parse_optimizer_config", "register_optimizer", "registered",
]
