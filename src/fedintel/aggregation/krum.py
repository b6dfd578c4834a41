"""Krum and multi-Krum: keep the update(s) closest to their neighbours.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017. With ``n`` updates of which at most ``f`` are malicious, each update ``i`` gets the
score ``s(i) = sum of squared L2 distances to its n - f - 2 nearest other updates``. Krum returns the update
with the lowest score; multi-Krum (Section 5 of the paper) averages the ``m`` lowest-scoring updates. The
guarantee needs ``n >= 2f + 3``; with fewer updates the rule still runs (neighbour count clamped to at least
one) and logs a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.config import AggregationConfig, register_aggregator
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def pairwise_sq_distances(states: Sequence[AdapterState]) -> torch.Tensor:
    """``n x n`` float64 matrix of squared L2 distances between whole deltas (all tensors together)."""
    import torch

    n = len(states)
    dist = torch.zeros((n, n), dtype=torch.float64)
    for key in states[0]:
        flat = torch.stack([s[key].reshape(-1).to(torch.float64) for s in states])
        for i in range(n):  # direct differences: no cancellation when one update is huge
            dist[i] += (flat - flat[i]).pow(2).sum(dim=1)
    return dist


def krum_scores(states: Sequence[AdapterState], num_malicious: int) -> torch.Tensor:
    """Krum score of every state: sum of squared distances to its ``n - f - 2`` nearest neighbours."""
    import torch

    n = len(states)
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    if n < 2 * num_malicious + 3:
        log.warning(
            "Krum's guarantee needs n >= 2f + 3 updates, got n=%d with f=%d; scoring anyway", n, num_malicious
        )
    k = max(1, min(n - 1, n - num_malicious - 2))
    dist = pairwise_sq_distances(states)
    dist.fill_diagonal_(float("inf"))  # never count a state as its own neighbour
    nearest = dist.topk(k, dim=1, largest=False).values
    return nearest.sum(dim=1)


def _check_f(num_malicious: int) -> None:
    if num_malicious < 0:
        raise ValueError(f"aggregation.num_malicious must be >= 0, got {num_malicious}")


class KrumConfig(AggregationConfig):
    """``aggregation.rule: krum``."""

    rule: Literal["krum"] = "krum"
    num_malicious: int = Field(0, ge=0, description="Assumed number of attackers f.")


class Krum(Aggregator):
    """Return the single update with the lowest Krum score (ties: the lowest position).

    Args:
        num_malicious: ``f``, the number of malicious updates to tolerate per round.
    """

    def __init__(self, num_malicious: int = 0) -> None:
        _check_f(num_malicious)
        self.num_malicious = num_malicious

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> Krum:
        return cls(num_malicious=config.num_malicious)  # type: ignore[attr-defined]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        import torch

        scores = krum_scores([u.delta for u in updates], self.num_malicious)
        best = int(torch.argmin(scores))
        return {k: v.clone() for k, v in updates[best].delta.items()}


class MultiKrumConfig(AggregationConfig):
    """``aggregation.rule: multi_krum``."""

    rule: Literal["multi_krum"] = "multi_krum"  # type: ignore[assignment]
    num_malicious: int = Field(0, ge=0, description="Assumed number of attackers f.")
    multi_krum_m: int | None = Field(None, ge=1, description="Updates averaged (default n - f).")


class MultiKrum(Aggregator):
    """Average the ``m`` updates with the lowest Krum scores (Blanchard et al. 2017, Section 5).

    Args:
        num_malicious: ``f``, the number of malicious updates to tolerate per round.
        m: how many updates to keep; default ``n - f`` (at least 1).
        weighted: average the kept updates by ``num_samples`` (default: plain mean, as in the paper).
    """

    def __init__(self, num_malicious: int = 0, m: int | None = None, weighted: bool = False) -> None:
        _check_f(num_malicious)
        if m is not None and m < 1:
            raise ValueError(f"aggregation.m must be >= 1, got {m}")
        self.num_malicious = num_malicious
        self.m = m
        self.weighted = weighted

    @classmethod
    def from_config(cls, config: AggregationConfig, seed: int) -> MultiKrum:
        return cls(num_malicious=config.num_malicious, m=config.multi_krum_m)  # type: ignore[attr-defined]

    def selected(self, updates: Sequence[Update]) -> list[int]:
        """Positions in ``updates`` of the kept updates, best score first."""
        import torch

        n = len(updates)
        m = self.m if self.m is not None else n - self.num_malicious
        m = max(1, min(m, n))
        scores = krum_scores([u.delta for u in updates], self.num_malicious)
        return [int(i) for i in torch.argsort(scores, stable=True)[:m]]

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        keep = [updates[i] for i in self.selected(updates)]
        weights = [float(u.num_samples) if self.weighted else 1.0 for u in keep]
        return weighted_mean([u.delta for u in keep], weights)


register_aggregator(name="krum", config_cls=KrumConfig, aggregator_cls=Krum)
register_aggregator(name="multi_krum", config_cls=MultiKrumConfig, aggregator_cls=MultiKrum)
