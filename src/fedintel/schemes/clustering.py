"""How clients are grouped into clusters: by given domains, update similarity, device capability, latency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import kmeans2

from fedintel.types import AdapterState


def flatten(delta: AdapterState) -> np.ndarray:
    """All tensors of a delta as one float64 vector (sorted keys)."""
    return np.concatenate([delta[k].detach().double().reshape(-1).numpy() for k in sorted(delta)])


def cluster_by_similarity(
    deltas: Sequence[AdapterState], k: int, algorithm: str = "agglomerative", seed: int = 0
) -> list[int]:
    """Cluster updates by cosine similarity into ``k`` groups; labels are ordered by first appearance.

    ``agglomerative``: average linkage on cosine distance (Sattler et al., CFL, 2020 use the same
    similarity); ``kmeans``: k-means on L2-normalised updates (spherical k-means).
    """
    x = np.stack([flatten(d) for d in deltas])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if k >= len(deltas):
        raw = list(range(len(deltas)))
    elif algorithm == "kmeans":
        _, raw_arr = kmeans2(x, k, minit="++", seed=np.random.default_rng(seed))
        raw = raw_arr.tolist()
    else:
        z = linkage(x, method="average", metric="cosine")
        raw = (fcluster(z, t=k, criterion="maxclust") - 1).tolist()
    return relabel(raw)


def relabel(labels: Sequence[int]) -> list[int]:
    """Renumber cluster labels 0, 1, ... in order of first appearance (stable across runs)."""
    mapping: dict[int, int] = {}
    return [mapping.setdefault(int(label), len(mapping)) for label in labels]


def cluster_by_value(values: Sequence[float], k: int) -> list[int]:
    """Contiguous quantile groups of a scalar (device FLOP/s, distance): ``k`` groups of near-equal size."""
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), dtype=int)
    for g, chunk in enumerate(np.array_split(order, k)):
        labels[chunk] = g
    return labels.tolist()


def purity(assignment: Sequence[int], truth: Sequence[str | None]) -> float:
    """Cluster purity: share of clients whose cluster's majority domain is their own domain."""
    pairs = [(a, t) for a, t in zip(assignment, truth, strict=True) if a >= 0 and t is not None]
    if not pairs:
        return float("nan")
    total = 0
    for c in {a for a, _ in pairs}:
        total += Counter(t for a, t in pairs if a == c).most_common(1)[0][1]
    return total / len(pairs)
