"""FedProx: a proximal term keeps each client's adapter near the global one it started from.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks", MLSys 2020.
Every local step minimises ``loss + mu/2 ||w - w_global||^2`` over the adapter tensors: the term's gradient
``mu (w - w_global)`` is added to the adapter's gradients after backward, before clipping and the optimizer
step (so ``federation.max_grad_norm`` clips the whole objective's gradient). The server side is FedAvg's.
With ``mu = 0`` the term is still computed (and adds exact zeros): the run equals FedAvg bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedintel.optimizers.base import FederatedOptimizer, LocalTerm, OptimizerConfig
from fedintel.optimizers.registry import register_optimizer
from fedintel.types import AdapterState

if TYPE_CHECKING:
    import torch


class FedProxConfig(OptimizerConfig):
    """The proximal weight."""

    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0, description="Proximal weight mu >= 0 (0: FedAvg).")


class ProximalTerm:
    """Adds ``mu (w - anchor)`` to every adapter gradient."""

    def __init__(self, anchor: AdapterState, mu: float) -> None:
        self.anchor = anchor
        self.mu = mu

    def before_step(self, params: dict[str, torch.Tensor]) -> None:
        for k, p in params.items():
            if p.grad is not None:
                p.grad.add_(p.detach() - self.anchor[k].to(device=p.device, dtype=p.dtype), alpha=self.mu)

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        pass


class FedProx(FederatedOptimizer):
    def local_term(self, start: AdapterState, extras: dict[str, AdapterState], lr: float) -> LocalTerm | None:
        return ProximalTerm(start, self.config.mu)  # type: ignore[attr-defined]


register_optimizer(name="fedprox", config_cls=FedProxConfig, optimizer_cls=FedProx)
