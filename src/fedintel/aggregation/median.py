"""Coordinate-wise median of client deltas.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018. Each coordinate of the aggregate is the median of that coordinate over the clients
(the mean of the two middle values when the count is even). Sample counts are ignored: a weighted median
would let one client claim a huge ``num_samples`` and win every coordinate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.types import AdapterState, Update


def coordinate_median(states: Sequence[AdapterState]) -> AdapterState:
    """Median over ``states`` coordinate by coordinate, computed in float64, returned in the input dtype."""
    import torch

    if not states:
        raise ValueError("coordinate_median of no states")
    n = len(states)
    out: AdapterState = {}
    for key, ref in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states]).sort(dim=0).values
        mid = n // 2
        med = stacked[mid] if n % 2 else (stacked[mid - 1] + stacked[mid]) / 2
        out[key] = med.to(ref.dtype)
    return out


class MedianConfig(AggregationConfig):
    """``aggregation.rule: median`` (no knobs)."""

    rule: Literal["median"] = "median"


class Median(Aggregator):
    """Coordinate-wise median (Yin et al. 2018); tolerates fewer than half of the clients being malicious."""

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        return coordinate_median([u.delta for u in updates])


register_aggregator(name="median", config_cls=MedianConfig, aggregator_cls=Median)
