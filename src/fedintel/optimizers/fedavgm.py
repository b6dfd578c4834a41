"""FedAvgM: server momentum on the aggregated delta.

Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification",
arXiv:1909.06335, 2019; the SGD-with-momentum server of Reddi et al., "Adaptive Federated Optimization", ICLR
2021. With ``d`` the aggregated delta (minus the pseudo-gradient): ``v <- momentum * v + d``,
``w <- w + eta * v`` (PyTorch's SGD convention, as Flower's ``FedAvgM``). ``momentum = 0, eta = 1`` is FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedintel.optimizers.base import FederatedOptimizer, OptimizerConfig, refuse_saved_client_updates
from fedintel.optimizers.registry import register_optimizer
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


class FedAvgMConfig(OptimizerConfig):
    """Server learning rate and momentum."""

    name: Literal["fedavgm"] = "fedavgm"
    eta: float = Field(1.0, gt=0, description="Server learning rate on the (momentum) delta.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum, in [0, 1).")

    def cross_check(self, cfg: ExperimentConfig) -> None:
        refuse_saved_client_updates(cfg)


class FedAvgM(FederatedOptimizer):
    """``v <- momentum * v + d``, ``w <- w + eta * v``; the state is ``{"v": ...}`` per aggregation node."""

    stateless = False

    def init_state(self, params: AdapterState) -> dict[str, Any]:
        return {"v": {k: t.new_zeros(t.shape) for k, t in params.items()}}

    def step(self, params: AdapterState, delta: AdapterState, state: dict[str, Any],
             updates: Sequence[Update] = (), population: int = 0) -> tuple[AdapterState, dict[str, Any]]:
        c: FedAvgMConfig = self.config  # type: ignore[assignment]
        v = {k: c.momentum * state["v"][k] + delta[k].to(state["v"][k].dtype) for k in params}
        return {k: params[k] + c.eta * v[k].to(params[k].dtype) for k in params}, {"v": v}


register_optimizer(name="fedavgm", config_cls=FedAvgMConfig, optimizer_cls=FedAvgM)
