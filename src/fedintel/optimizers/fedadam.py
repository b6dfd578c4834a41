"""FedAdam: Adam on the server, the aggregated delta as the (negative) gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedAdam); Flower's ``FedAdam``.
``v <- beta2 v + (1 - beta2) d^2``; with ``bias_correction`` the step is Kingma & Ba's
``eta sqrt(1 - beta2^t) / (1 - beta1^t)``. See :mod:`fedintel.optimizers.fedopt` for the shared step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedintel.optimizers.fedopt import AdaptiveConfig, AdaptiveOptimizer
from fedintel.optimizers.registry import register_optimizer

if TYPE_CHECKING:
    import torch


class FedAdamConfig(AdaptiveConfig):
    """FedAdam's knobs."""

    name: Literal["fedadam"] = "fedadam"
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay, in [0, 1).")
    bias_correction: bool = Field(True, description="Scale eta by sqrt(1 - beta2^t) / (1 - beta1^t), as Flower.")


class FedAdam(AdaptiveOptimizer):
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        b2 = self.config.beta2  # type: ignore[attr-defined]
        return b2 * v + (1 - b2) * d2

    def step_size(self, t: int) -> float:
        c: FedAdamConfig = self.config  # type: ignore[assignment]
        if not c.bias_correction:
            return c.eta
        return c.eta * math.sqrt(1 - c.beta2**t) / (1 - c.beta1**t)


register_optimizer(name="fedadam", config_cls=FedAdamConfig, optimizer_cls=FedAdam)
