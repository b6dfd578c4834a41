"""FedAdagrad: Adagrad on the server; the second moment sums every squared delta.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedAdagrad); Flower's ``FedAdagrad``
(whose ``beta_1`` defaults to 0: no momentum). ``v <- v + d^2``. See :mod:`fedintel.optimizers.fedopt`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedintel.optimizers.fedopt import AdaptiveConfig, AdaptiveOptimizer
from fedintel.optimizers.registry import register_optimizer

if TYPE_CHECKING:
    import torch


class FedAdagradConfig(AdaptiveConfig):
    """FedAdagrad's knobs (``beta1`` defaults to 0, as in Flower)."""

    name: Literal["fedadagrad"] = "fedadagrad"
    beta1: float = Field(0.0, ge=0, lt=1, description="First-moment decay, in [0, 1) (0: no momentum).")


class FedAdagrad(AdaptiveOptimizer):
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        return v + d2


register_optimizer(name="fedadagrad", config_cls=FedAdagradConfig, optimizer_cls=FedAdagrad)
