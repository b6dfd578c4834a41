"""How clients are grouped into clusters: the ``clustering:`` section and its registered methods.

Each method registers itself with its own config class (:func:`register_clustering_method`):
``given`` (the data partition's domains), ``similarity`` (cosine similarity of the clients' first updates,
after Sattler et al., "Clustered Federated Learning", IEEE TNNLS 2020), ``ifca`` (Ghosh et al., NeurIPS 2020:
each client picks the cluster adapter with the lowest loss on its own data, every round), ``capability`` and
``latency`` (device FLOP/s or distance to the base station, the paper's section III-A).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.cluster.vq import kmeans2

from fedintel.errors import ConfigError
from fedintel.registry import Registry
from fedintel.sections import Section
from fedintel.types import AdapterState

if TYPE_CHECKING:
    from fedintel.world import World


class ClusteringConfig(Section):
    """Clustered federated fine-tuning (CFL-LoRA): one adapter per cluster; each method adds its knobs."""

    num_clusters: int = Field(4, ge=1)
    method: str = Field(
        "given",
        description="given: the data partition's domains; similarity: cosine similarity of first updates "
        "(agglomerative or kmeans); ifca: each client picks the lowest-loss cluster every round; "
        "capability/latency: group by device FLOP/s or by distance to the base station.",
    )
    share_beta: float = Field(
        0.0, ge=0, le=1, description="Cross-cluster sharing: mix beta of the mean of all clusters in."
    )
    share_every: int = Field(1, ge=1, description="Rounds between cross-cluster sharing steps.")
    shared_keys: list[str] = Field(
        default_factory=list,
        description="Substrings of adapter tensor names averaged across all clusters every round "
        "(e.g. 'layers.0.' shares the first layer).",
    )


class ClusteringMethod:
    """How a clustered run assigns clients to clusters. ``-1``: not assigned yet.

    ``forms_from_updates``: the first round trains every client from the shared start and :meth:`form`
    groups their deltas; ``picks_each_round``: every selected client picks its cluster before training
    (by the loss of each cluster's adapter on its own data, which the scheme evaluates).
    """

    forms_from_updates = False
    picks_each_round = False

    def __init__(self, config: ClusteringConfig) -> None:
        self.config = config

    def initial_assignment(self, world: World) -> list[int]:
        return [-1] * world.cfg.federation.num_clients

    def form(self, deltas: Sequence[AdapterState], seed: int) -> list[int]:
        raise NotImplementedError


CLUSTERING_METHODS: Registry[ClusteringConfig, type[ClusteringMethod]] = Registry(
    "clustering", "method", "clustering method")


def register_clustering_method(*, name: str, config_cls: type[ClusteringConfig],
                               method_cls: type[ClusteringMethod]) -> None:
    """Make ``clustering: {method: <name>, ...}`` valid, validated by ``config_cls``, run by ``method_cls``."""
    CLUSTERING_METHODS.register(name, config_cls, method_cls)


def parse_clustering_config(raw: Any) -> ClusteringConfig:
    """Validate a ``clustering:`` mapping against the config class registered under its ``method``."""
    if isinstance(raw, dict):
        raw = CLUSTERING_METHODS.drop_defaults_of_others(raw, str(raw.get("method", "given")))
    return CLUSTERING_METHODS.parse(raw, "given", ClusteringConfig)


def build_clustering_method(config: ClusteringConfig) -> ClusteringMethod:
    return CLUSTERING_METHODS.impl(config.method)(config)


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


class GivenConfig(ClusteringConfig):
    method: Literal["given"] = "given"  # type: ignore[assignment]


class Given(ClusteringMethod):
    """One cluster per domain of the data partition (``data.partition.method: by_domain``)."""

    def initial_assignment(self, world: World) -> list[int]:
        c, domains = self.config, world.data.client_domains
        if any(d is None for d in domains):
            raise ConfigError("clustering.method: given needs data.partition.method by_domain (clients' domains)")
        names = sorted({d for d in domains if d is not None})
        if len(names) != c.num_clusters:
            raise ConfigError(
                f"clustering.num_clusters ({c.num_clusters}) must equal the number of domains ({len(names)}) "
                "for method given"
            )
        return [names.index(d) for d in domains]  # type: ignore[arg-type]


class SimilarityConfig(ClusteringConfig):
    method: Literal["similarity"] = "similarity"  # type: ignore[assignment]
    algorithm: Literal["agglomerative", "kmeans"] = "agglomerative"


class Similarity(ClusteringMethod):
    """Cluster the clients' first updates by cosine similarity."""

    forms_from_updates = True

    def form(self, deltas: Sequence[AdapterState], seed: int) -> list[int]:
        return cluster_by_similarity(deltas, self.config.num_clusters, self.config.algorithm, seed)  # type: ignore[attr-defined]


class IFCAConfig(ClusteringConfig):
    method: Literal["ifca"] = "ifca"  # type: ignore[assignment]
    ifca_eval_batches: int = Field(2, ge=1, description="Micro-batches of local data to score clusters.")


class IFCA(ClusteringMethod):
    """Each selected client picks the cluster whose adapter has the lowest loss on its data, every round."""

    picks_each_round = True


class CapabilityConfig(ClusteringConfig):
    method: Literal["capability"] = "capability"  # type: ignore[assignment]


class LatencyConfig(ClusteringConfig):
    method: Literal["latency"] = "latency"  # type: ignore[assignment]


class _ByValue(ClusteringMethod):
    def values(self, world: World) -> list[float]:
        raise NotImplementedError

    def initial_assignment(self, world: World) -> list[int]:
        if world.network is None:
            raise ConfigError(f"clustering.method: {self.config.method} needs network.enabled: true")
        return cluster_by_value(self.values(world), self.config.num_clusters)


class Capability(_ByValue):
    """Contiguous groups of device compute (FLOP/s)."""

    def values(self, world: World) -> list[float]:
        return [p.flops for p in world.network.profiles]  # type: ignore[union-attr]


class Latency(_ByValue):
    """Contiguous groups of distance to the base station."""

    def values(self, world: World) -> list[float]:
        return list(world.network.distances_m)  # type: ignore[union-attr]


register_clustering_method(name="given", config_cls=GivenConfig, method_cls=Given)
register_clustering_method(name="similarity", config_cls=SimilarityConfig, method_cls=Similarity)
register_clustering_method(name="ifca", config_cls=IFCAConfig, method_cls=IFCA)
register_clustering_method(name="capability", config_cls=CapabilityConfig, method_cls=Capability)
register_clustering_method(name="latency", config_cls=LatencyConfig, method_cls=Latency)
