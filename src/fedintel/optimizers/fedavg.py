"""FedAvg as a federated optimizer: the server adds the aggregated delta; the default (``optimizer.name: fedavg``).

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
Behaviour is exactly that of a run without an ``optimizer:`` section.
"""

from __future__ import annotations

from typing import Literal

from fedintel.optimizers.base import FederatedOptimizer, OptimizerConfig
from fedintel.optimizers.registry import register_optimizer


class FedAvgConfig(OptimizerConfig):
    """No knobs: the aggregated delta is added to the global adapter as it is."""

    name: Literal["fedavg"] = "fedavg"


register_optimizer(name="fedavg", config_cls=FedAvgConfig, optimizer_cls=FederatedOptimizer)
