"""The ``optimizer:`` section with the built-in federated optimizers registered: import from here to parse one.

Importing an algorithm module registers it; this module imports every built-in one and re-exports the
registry's functions.
"""

from fedintel.optimizers import fedadagrad, fedadam, fedavg, fedavgm, fedprox, fedyogi, scaffold  # noqa: F401
from fedintel.optimizers.registry import (
    build_optimizer,
    config_class,
    parse_optimizer_config,
    register_optimizer,
    registered,
)

__all__ = ["build_optimizer", "config_class", "parse_optimizer_config", "register_optimizer", "registered"]
