"""The adaptive server optimizers' shared step (FedAdam, FedYogi, FedAdagrad), after Flower's ``FedOpt``.

Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan, "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2. With ``d`` the aggregated delta: ``m <- beta1 m + (1 - beta1) d``, ``v`` by the subclass's rule,
``w <- w + eta_t m / (sqrt(v) + tau)``. ``m`` and ``v`` start at zero, as in Flower. ``eta_t = eta`` except in
FedAdam with ``bias_correction`` (Kingma & Ba's ``eta sqrt(1 - beta2^t) / (1 - beta1^t)``, ``t`` the node's
step count; Flower's ``FedAdam`` uses the exponent ``server_round + 1``, i.e. ``t`` one ahead).

Limits: the state is per aggregation node and counts that node's steps, not global rounds, so a cluster that
skips a round does not advance its ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fedintel.optimizers.base import FederatedOptimizer, OptimizerConfig, refuse_saved_client_updates
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    import torch

    from fedintel.config import ExperimentConfig


class AdaptiveConfig(OptimizerConfig):
    """Knobs every adaptive server optimizer has (Reddi et al. 2021)."""

    eta: float = Field(1e-3, gt=0, description="Server learning rate (per-coordinate step scale, adapter units).")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay, in [0, 1).")
    tau: float = Field(1e-6, gt=0, description="Adaptivity: added to sqrt(v); larger is closer to FedAvgM.")

    def cross_check(self, cfg: ExperimentConfig) -> None:
        refuse_saved_client_updates(cfg)


class AdaptiveOptimizer(FederatedOptimizer):
    """Shared step; subclasses give :meth:`second_moment` (and FedAdam its bias correction)."""

    stateless = False

    def init_state(self, params: AdapterState) -> dict[str, Any]:
        zeros = {k: t.new_zeros(t.shape) for k, t in params.items()}
        return {"m": zeros, "v": {k: t.clone() for k, t in zeros.items()}, "t": 0}

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_size(self, t: int) -> float:
        """``eta_t`` of step ``t`` (1-based)."""
        return self.config.eta  # type: ignore[attr-defined,no-any-return]

    def step(self, params: AdapterState, delta: AdapterState, state: dict[str, Any],
             updates: Sequence[Update] = (), population: int = 0) -> tuple[AdapterState, dict[str, Any]]:
        c: AdaptiveConfig = self.config  # type: ignore[assignment]
        t = int(state["t"]) + 1
        eta_t = self.step_size(t)
        m, v, out = {}, {}, {}
        for k in params:
            d = delta[k].to(state["m"][k].dtype)
            m[k] = c.beta1 * state["m"][k] + (1 - c.beta1) * d
            v[k] = self.second_moment(state["v"][k], d**2)
            out[k] = params[k] + (eta_t * m[k] / (v[k].sqrt() + c.tau)).to(params[k].dtype)
        return out, {"m": m, "v": v, "t": t}
