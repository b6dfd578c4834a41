"""Norm bounding: clip every client delta to an L2 norm of ``max_norm``, then FedAvg.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963, 2019.
A scaled (boosted) malicious update can then move the aggregate by at most its weight times ``max_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.aggregation.validate import update_norm
from fedintel.types import AdapterState, Update


def clip_to_norm(delta: AdapterState, max_norm: float) -> AdapterState:
    """``delta * min(1, max_norm / ||delta||_2)`` with the norm taken over all tensors together."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = update_norm(delta)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: v * factor if factor < 1.0 else v.clone() for k, v in delta.items()}


class NormBoundConfig(AggregationConfig):
    """``aggregation.rule: norm_bound``."""

    rule: Literal["norm_bound"] = "norm_bound"
    max_norm: float = Field(1.0, gt=0, description="L2 bound each delta is clipped to.")


class NormBound(Aggregator):
    """Clip each delta to ``max_norm`` (L2, over the whole adapter), then take the (weighted) mean.

    Args:
        max_norm: the L2 bound, in the units of the delta (adapter parameter space).
        weighted: weight by ``num_samples`` as FedAvg does; ``False`` for a plain mean.
    """

    def __init__(self, max_norm: float = 1.0, weighted: bool = True) -> None:
        if not max_norm > 0:
            raise ValueError(f"aggregation.max_norm must be positive, got {max_norm}")
        self.max_norm = max_norm
        self.weighted = weighted

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> NormBound:
        return cls(max_norm=config.max_norm, weighted=config.weighted)  # type: ignore[attr-defined]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        clipped = [clip_to_norm(u.delta, self.max_norm) for u in updates]
        weights = [float(u.num_samples) if self.weighted else 1.0 for u in updates]
        return weighted_mean(clipped, weights)


register_aggregator(name="norm_bound", config_cls=NormBoundConfig, aggregator_cls=NormBound)
