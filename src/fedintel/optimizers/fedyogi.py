"""FedYogi: Yogi on the server; the second moment grows additively, so it forgets large deltas slowly.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedYogi), after Zaheer et al.,
"Adaptive Methods for Nonconvex Optimization", NeurIPS 2018; Flower's ``FedYogi``.
``v <- v - (1 - beta2) d^2 sign(v - d^2)``. See :mod:`fedintel.optimizers.fedopt` for the shared step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedintel.optimizers.fedopt import AdaptiveConfig, AdaptiveOptimizer
from fedintel.optimizers.registry import register_optimizer

if TYPE_CHECKING:
    import torch


class FedYogiConfig(AdaptiveConfig):
    """FedYogi's knobs."""

    name: Literal["fedyogi"] = "fedyogi"
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment rate, in [0, 1).")


class FedYogi(AdaptiveOptimizer):
    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        b2 = self.config.beta2  # type: ignore[attr-defined]
        return v - (1.0 - b2) * d2 * (v - d2).sign()


register_optimizer(name="fedyogi", config_cls=FedYogiConfig, optimizer_cls=FedYogi)
