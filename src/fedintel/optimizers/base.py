"""The federated optimizer interface: a server step on the aggregated delta, and optional client terms.

A federated optimizer is everything FedAvg leaves fixed: how the server applies the aggregated delta
(FedAvgM, FedAdam, FedYogi, FedAdagrad: Reddi et al., "Adaptive Federated Optimization", ICLR 2021) and what a
client adds to its local steps (FedProx's proximal term, SCAFFOLD's drift correction). The aggregation rule
(FedAvg, a robust rule, DP, secure aggregation) still produces the delta; the optimizer then applies it, so
the two compose.

The optimizer object holds only its hyperparameters. Its state (moments, control variates) lives in a plain
dict the scheme keeps in its own state, one per aggregation node (the server, each cluster, each edge server),
so checkpoints carry it and a resumed run continues exactly.

This module imports no torch: the arithmetic uses tensor methods, so the config can import the registry
without pulling torch into light commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from fedintel.sections import Section
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    import torch

    from fedintel.config import ExperimentConfig


class OptimizerConfig(Section):
    """The ``optimizer:`` section; each algorithm registers a subclass with its own knobs.

    Subclasses narrow ``name`` to their registered name and may override :meth:`cross_check` to refuse
    experiment settings they cannot serve.
    """

    name: str = Field("fedavg", description="The federated optimizer (see `fedintel.optimizers.registered()`).")

    def cross_check(self, cfg: ExperimentConfig) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` naming the fields if ``cfg`` combines this algorithm with what it cannot serve."""


class LocalTerm(Protocol):
    """A client-side term of local training (the shape :func:`fedintel.training.client.train_local` calls)."""

    def before_step(self, params: dict[str, torch.Tensor]) -> None:
        """Change the adapter's gradients after backward and before clipping / the optimizer step."""

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        """Change the adapter's values after the optimizer step (no autograd)."""


def refuse_saved_client_updates(cfg: ExperimentConfig) -> None:
    """A server optimizer mixes every round's delta into its state; approximate unlearning cannot undo that."""
    if cfg.output.save_client_updates:
        raise ValueError(
            f"optimizer.name: {cfg.optimizer.name} with output.save_client_updates: approximate unlearning subtracts "
            "a client's contributions from FedAvg's additive steps, which a stateful server optimizer does not take; "
            "use optimizer fedavg or fedprox, or turn output.save_client_updates off"
        )


def add_scaled(params: AdapterState, delta: AdapterState, scale: float = 1.0) -> AdapterState:
    """``params + scale * delta`` key by key (a new dict); bit-identical to the schemes' ``add_state``."""
    return {k: params[k] + scale * delta[k].to(params[k].dtype) for k in params}


class FederatedOptimizer:
    """FedAvg's behaviour: no state, the server adds the aggregated delta, clients train plainly.

    Subclasses override the server step (:meth:`init_state`, :meth:`step`) and/or the client side
    (:meth:`downlink`, :meth:`local_term`, :meth:`finish_update`).
    """

    name = "fedavg"
    stateless = True
    """True when :meth:`step` is ``params + delta`` with no state (schemes may then merge models directly)."""

    def __init__(self, config: OptimizerConfig) -> None:
        self.config = config

    # -- server side ---------------------------------------------------------------------------------
    def init_state(self, params: AdapterState) -> dict[str, Any]:
        """The state of one aggregation node before its first step (tensors and plain values only)."""
        return {}

    def step(
        self, params: AdapterState, delta: AdapterState, state: dict[str, Any],
        updates: Sequence[Update] = (), population: int = 0,
    ) -> tuple[AdapterState, dict[str, Any]]:
        """Apply the aggregated ``delta`` (the mean client change, a negative pseudo-gradient) to ``params``.

        ``updates`` are the accepted updates behind ``delta`` and ``population`` the number of clients this
        node serves (SCAFFOLD needs both). Returns the new parameters and the new state; inputs are not
        modified.
        """
        return add_scaled(params, delta), state

    # -- client side ---------------------------------------------------------------------------------
    def downlink(self, state: dict[str, Any], client_id: int) -> dict[str, AdapterState]:
        """Extra tensors client ``client_id`` needs with the adapter (their bytes count on the downlink)."""
        return {}

    def downlink_nbytes(self, state: dict[str, Any]) -> int:
        """Extra bytes every client downloads with the adapter (e.g. SCAFFOLD's server control variate)."""
        return 0

    def local_term(self, start: AdapterState, extras: dict[str, AdapterState], lr: float) -> LocalTerm | None:
        """The term added to the client's local steps, or ``None`` for plain local training."""
        return None

    def finish_update(self, update: Update, start: AdapterState, extras: dict[str, AdapterState],
                      lr: float) -> Update:
        """Attach what the client uploads besides the delta (its bytes count on the uplink)."""
        return update
