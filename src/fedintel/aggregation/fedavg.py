"""FedAvg: the sample-weighted mean of client deltas.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
Applied to adapter tensors only (FL-LoRA / FL-P-Tuning / FL-Prompt-Tuning in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.types import AdapterState, Update


def weighted_mean(states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
    """``sum_i w_i * s_i / sum_i w_i`` key by key, accumulated in float64 for exactness."""
    import torch

    if not states:
        raise ValueError("weighted_mean of no states")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out: AdapterState = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(ref.dtype)
    return out


class FedAvgConfig(AggregationConfig):
    """``aggregation.rule: fedavg`` (``weighted`` picks sample weights or a plain mean)."""

    rule: Literal["fedavg"] = "fedavg"


class FedAvg(Aggregator):
    """Sample-weighted average of deltas (``weighted=False``: plain mean)."""

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = weighted

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> FedAvg:
        return cls(weighted=config.weighted)

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        weights = [float(u.num_samples) if self.weighted else 1.0 for u in updates]
        return weighted_mean([u.delta for u in updates], weights)


register_aggregator(name="fedavg", config_cls=FedAvgConfig, aggregator_cls=FedAvg)
