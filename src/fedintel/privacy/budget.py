"""A run's privacy budget: the noise multiplier for the planned run, and epsilon spent after each round.

This is where an experiment's settings meet the accountant (:mod:`fedintel.privacy.accountant`): the sampling
rate, whether amplification by subsampling holds, how many releases a client can be in, and, where selection
is not uniform random, each client's participation record (``dp_releases_x<k>`` client metrics in the metrics
store, so a resumed run reports the same epsilon). The runner asks one object, :class:`PrivacyLedger`, once per
round.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


def sample_rate(cfg: ExperimentConfig) -> float:
    return cfg.federation.clients_per_round / cfg.federation.num_clients


def amplified(cfg: ExperimentConfig) -> bool:
    """Whether every round's clients are a uniform random sample, so amplification by subsampling holds."""
    if cfg.federation.scheme == "async":
        return False
    if cfg.federation.scheme == "clustered" and cfg.clustering.method == "similarity":
        return False  # the forming round trains every client
    return not cfg.network.enabled or cfg.network.selection == "random"


def planned_releases(cfg: ExperimentConfig) -> int:
    """The most releases one client can be in over the planned run: rounds, or arrivals under async."""
    f = cfg.federation
    if f.scheme != "async":
        return f.rounds
    return f.rounds * (cfg.asynchronous.arrivals_per_round or f.clients_per_round)


def noise_multiplier(cfg: ExperimentConfig) -> float:
    """sigma: given, or derived from ``target_epsilon`` for the planned run (without amplification where
    selection is not uniform random: a client may then be in every release)."""
    p = cfg.privacy
    if p.dp == "central" and not amplified(cfg):
        return p.resolve_noise_multiplier(planned_releases(cfg), 1.0)
    if p.dp == "local" and cfg.federation.scheme == "async":
        return p.resolve_noise_multiplier(planned_releases(cfg), 1.0)
    return p.resolve_noise_multiplier(cfg.federation.rounds, sample_rate(cfg))


Participation = dict[int, Counter[int]]
"""Client id -> {multiplicity k: number of releases that held its update k times}."""

RELEASE_METRIC = "dp_releases_x"


def by_participation(cfg: ExperimentConfig) -> bool:
    """Whether epsilon is accounted from each client's actual participation record."""
    p = cfg.privacy
    return (p.dp == "central" and not amplified(cfg)) or (p.dp == "local" and cfg.federation.scheme == "async")


def round_releases(cfg: ExperimentConfig, aggregations: Iterable[Mapping[int, int]],
                   uploads: Mapping[int, int]) -> dict[int, dict[str, float]]:
    """The round's releases per client as client metrics (``dp_releases_x<k>``), for the participation record.

    Central DP: each aggregation that included a client's update (``k`` times) is one release of multiplicity
    ``k``. Local DP: each upload is a release of multiplicity 1.
    """
    rows: dict[int, Counter[int]] = {}
    if cfg.privacy.dp == "central":
        for agg in aggregations:
            for cid, k in agg.items():
                rows.setdefault(cid, Counter())[k] += 1
    elif cfg.privacy.dp == "local":
        for cid, n in uploads.items():
            rows.setdefault(cid, Counter())[1] += n
    return {cid: {f"{RELEASE_METRIC}{k}": float(n) for k, n in c.items()} for cid, c in rows.items()}


def add_participation(total: Participation, rows: Iterable[tuple[int, Mapping[str, float]]]) -> Participation:
    """Add client metric rows (``(client_id, {name: value})``) holding ``dp_releases_x<k>`` to ``total``."""
    for cid, metrics in rows:
        for name, value in metrics.items():
            if name.startswith(RELEASE_METRIC):
                total.setdefault(int(cid), Counter())[int(name[len(RELEASE_METRIC):])] += int(value)
    return total


def epsilon_after(cfg: ExperimentConfig, rounds_done: int, participation: Participation | None = None) -> float | None:
    """(epsilon at privacy.delta) after ``rounds_done`` rounds, or None without DP.

    Where selection is not uniform random (:func:`by_participation`) it is the worst client's epsilon over
    ``participation``, the releases each client's update was in so far.
    """
    p = cfg.privacy
    if p.dp == "none":
        return None
    # dp_accounting loads only for runs with DP
    from fedintel.privacy.accountant import compute_epsilon, worst_client_epsilon

    sigma = noise_multiplier(cfg)
    if by_participation(cfg):
        scale = 1.0 if p.dp == "central" else 2.0  # local: replace-one sensitivity 2C
        return worst_client_epsilon(sigma / scale, participation or {}, p.delta, p.accounting)
    if p.dp == "central":
        return compute_epsilon(sigma, sample_rate(cfg), rounds_done, p.delta, p.accounting)
    # local: worst case, a client that took part in every round; replace-one sensitivity 2C
    eps = compute_epsilon(sigma / 2.0, 1.0, rounds_done, p.delta, p.accounting)
    return eps if math.isfinite(eps) else float("inf")


@dataclass
class RoundPrivacy:
    """What one round adds to the metrics store: round metrics (``epsilon``) and client metrics (releases)."""

    metrics: dict[str, float] = field(default_factory=dict)
    clients: dict[int, dict[str, float]] = field(default_factory=dict)


class PrivacyLedger:
    """Epsilon spent by a run so far, kept across rounds (and rebuilt from the metrics store on resume)."""

    def __init__(self, cfg: ExperimentConfig, past_client_rows: Callable[[], Iterable[Mapping[str, float]]]) -> None:
        """``past_client_rows``: the run's client metric rows so far (each with a ``client_id``); read only where
        epsilon is accounted by participation."""
        self.cfg = cfg
        self.participation: Participation | None = None
        if by_participation(cfg):
            self.participation = add_participation({}, ((int(r["client_id"]), r) for r in past_client_rows()))

    def account(self, round_idx: int, aggregations: Iterable[Mapping[int, int]],
                uploads: Mapping[int, int]) -> RoundPrivacy:
        """Record round ``round_idx``'s releases (the scheme's aggregations and uploads); epsilon after it."""
        out = RoundPrivacy()
        if self.participation is not None:
            out.clients = round_releases(self.cfg, aggregations, uploads)
            add_participation(self.participation, out.clients.items())
        eps = epsilon_after(self.cfg, round_idx, self.participation)
        if eps is not None:
            out.metrics["epsilon"] = eps
        return out
