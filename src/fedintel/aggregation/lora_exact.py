"""Exact aggregation of LoRA adapters.

Averaging LoRA's factors separately is not averaging the updates they make: ``mean(B) @ mean(A) !=
mean(B @ A)``. ``ExactLoRA`` averages the products ``B_i @ A_i`` (sample-weighted) and re-factorises the
mean to the adapter's rank by truncated SVD (the best rank-r approximation, Eckart-Young), the approach
of FLoRA / FedEx-LoRA style aggregation (Wang et al., 2024; Singhal et al., 2024). Clients may train with
different ranks (zero-padded factors, as in HetLoRA); the products aggregate them exactly before
truncation. Tensors that are not LoRA factors (e.g. a classifier head) are averaged as in FedAvg.

Both rules report their error against the exact mean product, so the two can be compared:
``lora_naive_error`` = ||mean(B) mean(A) - mean(BA)||_F / ||mean(BA)||_F and ``lora_exact_error`` (the
SVD truncation residual, same normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.fedavg import weighted_mean
from fedintel.models.lora_rank import lora_pairs
from fedintel.types import AdapterState, Update


def _pair_products(
    updates: Sequence[Update], global_state: AdapterState, weights: Sequence[float], a: str, b: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one LoRA pair: the weighted mean of the products B_i A_i, and the weighted means of A and B.

    Client factors are rebuilt one at a time (global + delta), so memory stays at one adapter, not n.
    """
    total = float(sum(weights))
    prod = mean_a = mean_b = None
    for u, w in zip(updates, weights, strict=True):
        ai = global_state[a].double() + u.delta[a].double()
        bi = global_state[b].double() + u.delta[b].double()
        f = w / total
        prod = f * (bi @ ai) if prod is None else prod + f * (bi @ ai)
        mean_a = f * ai if mean_a is None else mean_a + f * ai
        mean_b = f * bi if mean_b is None else mean_b + f * bi
    return prod, mean_a, mean_b  # type: ignore[return-value]


def lora_errors(
    updates: Sequence[Update], global_state: AdapterState, weights: Sequence[float],
    refactorised: AdapterState | None = None,
) -> dict[str, float]:
    """Relative Frobenius errors of naive (and, if given, re-factorised) LoRA aggregation."""
    naive_num = exact_num = den = 0.0
    for a, b in lora_pairs(list(global_state)):
        prod, mean_a, mean_b = _pair_products(updates, global_state, weights, a, b)
        den += float(prod.pow(2).sum())
        naive_num += float((mean_b @ mean_a - prod).pow(2).sum())
        if refactorised is not None:
            exact_num += float((refactorised[b].double() @ refactorised[a].double() - prod).pow(2).sum())
    out = {"lora_naive_error": (naive_num / den) ** 0.5 if den > 0 else 0.0}
    if refactorised is not None:
        out["lora_exact_error"] = (exact_num / den) ** 0.5 if den > 0 else 0.0
    return out


class ExactLoRA(Aggregator):
    """Average ``B_i @ A_i`` and re-factorise to rank r by truncated SVD."""

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = weighted

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        weights = [float(u.num_samples) if self.weighted else 1.0 for u in updates]
        mean_delta = weighted_mean([u.delta for u in updates], weights)
        new = {k: global_state[k] + mean_delta[k] for k in global_state}  # non-LoRA tensors: FedAvg
        for a, b in lora_pairs(list(global_state)):
            prod, _, _ = _pair_products(updates, global_state, weights, a, b)
            rank = global_state[a].shape[0]
            u, sv, vh = torch.linalg.svd(prod, full_matrices=False)
            root = sv[:rank].sqrt()
            new[b] = (u[:, :rank] * root).to(global_state[b].dtype)
            new[a] = (root[:, None] * vh[:rank]).to(global_state[a].dtype)
        if ctx is not None:
            ctx.stats.update(lora_errors(updates, global_state, weights, new))
        return {k: new[k] - global_state[k] for k in global_state}


class MeasuredNaiveLoRA(Aggregator):
    """Wraps a rule that averages factors separately and reports ``lora_naive_error``."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.name = inner.name

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        delta = self.inner.aggregate(updates, global_state, ctx)
        if ctx is not None:
            weights = [float(u.num_samples) for u in updates]
            ctx.stats.update(lora_errors(updates, global_state, weights))
        return delta
