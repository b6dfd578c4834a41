"""Per-cluster exact unlearning: retrain only the forgotten client's cluster, replay the others.

In a clustered run whose clusters are fixed before training (``given``, ``capability``, ``latency``) and never
mix (no cross-cluster sharing), a cluster's adapter depends only on its own members. Opting a client out
then changes its own cluster and nothing else, so exact unlearning needs to retrain that one cluster: the
SISA idea (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021) with clusters as shards.

:class:`ReplayClusteredScheme` trains only the affected cluster's members (same sampling schedule, same
seeds) and, every round, takes the other clusters' adapters from the source run's checkpoint of that round.
Evaluations see the combined state, so the unlearned run has, bit for bit, the adapters and evaluation
metrics of a run that never had the client, for about ``1/K`` of the training. Its time, bytes and energy
count only the clients it really trained.

:func:`per_cluster_blocker` lists the conditions; when one fails the caller falls back to retraining every
cluster. A killed per-cluster unlearning resumed with ``fedintel resume`` finishes with the ordinary
clustered scheme: the remaining rounds cost a full retraining, and the result is the same.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fedintel.config import ExperimentConfig
from fedintel.schemes.base import RoundRecord
from fedintel.schemes.clustered import ClusteredScheme
from fedintel.tracking.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from fedintel.types import Update

STATIC_METHODS = ("given", "capability", "latency")
"""Cluster formation that does not depend on the clients' updates or losses."""
_INDEPENDENT_RULES = ("fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
"""Aggregation rules whose result for a cluster depends only on that cluster's updates."""


def per_cluster_blocker(cfg: ExperimentConfig, run_dir: Path, run_id: str, first_round: int) -> str | None:
    """Why retraining only the client's cluster would not be exact for this run, or ``None`` if it is."""
    c, net = cfg.clustering, cfg.network
    if cfg.federation.scheme != "clustered":
        return f"federation.scheme is {cfg.federation.scheme}, not clustered"
    if c.method not in STATIC_METHODS:
        return (f"clustering.method {c.method} forms clusters from every client's updates or losses, so removing "
                "one client can move the others")
    if c.shared_keys or c.share_beta > 0:
        return "cross-cluster sharing (clustering.shared_keys / share_beta) mixes the clusters"
    if cfg.aggregation.rule not in _INDEPENDENT_RULES:
        return f"aggregation.rule {cfg.aggregation.rule} draws randomness shared by all clusters of a round"
    if cfg.privacy.dp != "none" or cfg.privacy.secure_aggregation:
        return "differential privacy / secure aggregation draw noise or masks shared by all clusters of a round"
    if net.enabled:
        if net.selection != "random":
            return f"network.selection {net.selection} compares clients across clusters"
        if net.deadline_s is not None:
            return "network.deadline_s: fewer clients on the channel could change who meets the deadline"
        if _network_drops(run_dir, run_id, first_round):
            return "the network dropped clients (outage) after the client joined; with the client gone the others get more bandwidth"
    rounds = {r for r, _ in list_checkpoints(run_dir)}
    missing = [r for r in range(first_round, cfg.federation.rounds + 1) if r not in rounds]
    if missing:
        return (f"the source run has no checkpoint of round(s) {missing[:5]} (output.checkpoint_every > 1); "
                "the other clusters' adapters of every round are needed")
    return None


def _network_drops(run_dir: Path, run_id: str, first_round: int) -> bool:
    con = sqlite3.connect(Path(run_dir) / "metrics.db")
    try:
        n = con.execute("SELECT COUNT(*) FROM client_metrics WHERE run_id=? AND name='dropped' AND value=1 "
                        "AND round>=?", (run_id, first_round)).fetchone()[0]
    finally:
        con.close()
    return bool(n)


class ReplayClusteredScheme(ClusteredScheme):
    """Clustered scheme that trains one cluster and replays the others from a source run's checkpoints."""

    name = "clustered"  # checkpoints stay resumable by the ordinary clustered scheme

    def __init__(self, *args: Any, source_dir: Path, client_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_dir = Path(source_dir)
        assignment = self.method.initial_assignment(self.world)
        self.cluster = assignment[client_id]
        self.members = {c for c, k in enumerate(assignment) if k == self.cluster}

    def choose_clients(self, round_idx: int, candidates: Any, k: int) -> list[int]:
        # the full population is sampled as in the source run, then only the cluster's members train
        return [c for c in super().choose_clients(round_idx, candidates, k) if c in self.members]

    def _aggregate_clusters(self, round_idx: int, state: dict[str, Any], accepted: list[Update],
                            record: RoundRecord) -> None:
        super()._aggregate_clusters(round_idx, state, accepted, record)
        source = load_checkpoint(checkpoint_path(self.source_dir, round_idx))["state"]
        for k in range(len(state["clusters"])):
            if k != self.cluster:
                state["clusters"][k] = source["clusters"][k]
                state["versions"][k] = source["versions"][k]
        record.metrics["clusters_replayed"] = float(len(state["clusters"]) - 1)


def cluster_of(run_dir: Path, client_id: int) -> int:
    """The cluster ``client_id`` belongs to in the last checkpoint of a clustered run."""
    from fedintel.tracking.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no readable checkpoint")
    return int(ckpt["state"]["assignment"][client_id])
