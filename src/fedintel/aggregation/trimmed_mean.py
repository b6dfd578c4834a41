"""Coordinate-wise trimmed mean of client deltas.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018. For each coordinate, the ``floor(beta * n)`` largest and smallest values are dropped and
the rest averaged (unweighted). Tolerates up to ``beta * n`` malicious clients per coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.types import AdapterState, Update


def coordinate_trimmed_mean(states: Sequence[AdapterState], beta: float) -> AdapterState:
    """Mean over ``states`` after trimming ``floor(beta * n)`` values at each end, coordinate by coordinate."""
    import torch

    if not states:
        raise ValueError("coordinate_trimmed_mean of no states")
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed mean: beta must be in [0, 0.5), got {beta}")
    n = len(states)
    k = math.floor(beta * n)
    out: AdapterState = {}
    for key, ref in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states]).sort(dim=0).values
        out[key] = stacked[k : n - k].mean(dim=0).to(ref.dtype)
    return out


class TrimmedMeanConfig(AggregationConfig):
    """``aggregation.rule: trimmed_mean``."""

    rule: Literal["trimmed_mean"] = "trimmed_mean"
    trim_beta: float = Field(0.1, ge=0, lt=0.5, description="Fraction cut at each end of every coordinate.")


class TrimmedMean(Aggregator):
    """Coordinate-wise ``beta``-trimmed mean (Yin et al. 2018).

    Args:
        beta: fraction of clients trimmed at *each* end of every coordinate, in ``[0, 0.5)``; set it at
            least to the expected fraction of malicious clients.
    """

    def __init__(self, beta: float = 0.1) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"aggregation.beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> TrimmedMean:
        return cls(beta=config.trim_beta)  # type: ignore[attr-defined]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        return coordinate_trimmed_mean([u.delta for u in updates], self.beta)


register_aggregator(name="trimmed_mean", config_cls=TrimmedMeanConfig, aggregator_cls=TrimmedMean)
