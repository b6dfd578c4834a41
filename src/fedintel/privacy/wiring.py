"""Put the trust building blocks into a run: DP, secure aggregation and (for evaluation) attacks.

* ``privacy.dp: central`` without secure aggregation: the server clips, sums with equal weights and adds
  Gaussian noise (:class:`~fedintel.privacy.dp.DPAggregator`).
* ``privacy.secure_aggregation``: the server only learns the (weighted) sum through pairwise masks; with
  central DP the clients clip before masking and the server noises the unmasked sum. Clients selected but
  dropped (network, failure) exercise the protocol's mask recovery.
* ``privacy.dp: local``: every client clips and noises its own delta before upload (an update hook).
* ``attack``: malicious clients transform their updates (sign flip, scaling, noise) or train on flipped
  labels; this is how the robust rules are evaluated.

Epsilon is recomputed from the number of rounds done (random selection, amplified by sampling) or from each
client's participation record kept in the metrics store (``dp_releases_x<k>`` client metrics: any other
selection, and async; see :mod:`fedintel.privacy.accountant`), so a resumed run reports the same values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.config import ExperimentConfig
from fedintel.data.tokenize import TokenizedSet
from fedintel.privacy.attacks import apply_attack, flip_labels, malicious_clients
from fedintel.privacy.dp import DPAggregator, clip_delta, privatize_local, privatize_sum, round_generator
from fedintel.types import MASKED_KEY, AdapterState, TrainJob, Update
from fedintel.world import World, derive_seed


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


def masking_input(cfg: ExperimentConfig, delta: AdapterState, num_samples: int) -> AdapterState:
    """What a client masks under secure aggregation: its delta clipped to ``privacy.clip_norm`` (central DP:
    the server noises the unmasked sum), else ``w * delta`` and ``w`` (a weighted mean). The local simulation
    and a Flower SuperNode call this same function, so both sum the same fixed-point words."""
    from fedintel.privacy.secagg import weighted_input

    if cfg.privacy.dp == "central":
        return clip_delta(delta, cfg.privacy.clip_norm)
    return weighted_input(delta, num_samples, cfg.aggregation.weighted)


RemoteSum = Callable[[int, Sequence[Update], AdapterState], AdapterState]
"""``(round_idx, masked updates, template) -> unmasked sum``: secure aggregation run with the clients
themselves (the Flower engine's :meth:`~fedintel.engines.flower.engine.FlowerEngine.secure_sum`); ``template``
has the keys, shapes and dtypes of what each client masked."""


class SecureAggregator(Aggregator):
    """FedAvg (or DP-FedAvg) computed through pairwise-masked secure aggregation.

    Without ``remote`` every party runs in this process over plaintext deltas (a simulation: the local
    engine). With ``remote`` (set by :func:`fedintel.experiment.build_scheme` when the engine masks on the
    clients, ``engine: flower``) the updates are masked vectors and only their unmasked sum is ever formed here.
    """

    name = "secure"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.seed = cfg.federation.seed
        self.sigma = noise_multiplier(cfg) if cfg.privacy.dp == "central" else 0.0
        self.remote: RemoteSum | None = None

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        ctx = ctx or RoundContext()
        masked = [MASKED_KEY in u.delta for u in updates]
        if self.remote is not None or any(masked):
            if self.remote is None or not all(masked):
                raise RuntimeError("secure aggregation: plaintext and masked updates mixed, or masked updates "
                                   "without the clients to unmask them")
            return self._aggregate_remote(updates, global_state, ctx)
        from fedintel.privacy.secagg import secure_mean, secure_sum

        p = self.cfg.privacy
        common = {"dropped_ids": ctx.dropped, "threshold": p.secagg_threshold, "frac_bits": p.secagg_frac_bits}
        if p.dp == "central":
            clipped = [Update(u.client_id, clip_delta(u.delta, p.clip_norm), u.num_samples, u.base_version,
                              u.train_loss, u.steps, u.tokens) for u in updates]
            total = secure_sum(clipped, ctx.round_idx, self.seed, **common)
            gen = round_generator(self.seed, ctx.round_idx)
            out = privatize_sum({k: v.double() for k, v in total.items()}, self.cfg.federation.clients_per_round,
                                p.clip_norm, self.sigma, gen)
        else:
            out = secure_mean(updates, ctx.round_idx, self.seed, weighted=self.cfg.aggregation.weighted, **common)
        ctx.stats.update(secagg_clients=float(len(updates)), secagg_dropped=float(len(ctx.dropped)))
        return {k: out[k].to(global_state[k].dtype) for k in global_state}

    def _aggregate_remote(self, updates: Sequence[Update], global_state: AdapterState,
                          ctx: RoundContext) -> AdapterState:
        from fedintel.privacy.secagg import mean_from_sum

        assert self.remote is not None
        p = self.cfg.privacy
        template = masking_input(self.cfg, {k: torch.zeros_like(v) for k, v in global_state.items()}, 1)
        total = self.remote(ctx.round_idx, updates, template)
        if p.dp == "central":
            gen = round_generator(self.seed, ctx.round_idx)
            out = privatize_sum({k: v.double() for k, v in total.items()}, self.cfg.federation.clients_per_round,
                                p.clip_norm, self.sigma, gen)
        else:
            out = mean_from_sum(total, global_state)
        ctx.stats.update(secagg_clients=float(len(updates)), secagg_dropped=float(len(ctx.dropped)))
        return {k: out[k].to(global_state[k].dtype) for k in global_state}


def wrap_aggregator(cfg: ExperimentConfig, rule: Aggregator) -> Aggregator:
    """Replace or wrap ``rule`` as the privacy section asks."""
    p = cfg.privacy
    if p.secure_aggregation:
        return SecureAggregator(cfg)
    if p.dp == "central":
        return DPAggregator(p.clip_norm, noise_multiplier(cfg), cfg.federation.clients_per_round, cfg.federation.seed)
    return rule


def epsilon_after(cfg: ExperimentConfig, rounds_done: int, participation: Participation | None = None) -> float | None:
    """(epsilon at privacy.delta) after ``rounds_done`` rounds, or None without DP.

    Where selection is not uniform random (:func:`by_participation`) it is the worst client's epsilon over
    ``participation``, the releases each client's update was in so far.
    """
    p = cfg.privacy
    if p.dp == "none":
        return None
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


def update_hook(cfg: ExperimentConfig):  # noqa: ANN201 - returns an UpdateHook or None
    """Client-side transformations of updates: local DP noise, then (for malicious clients) attacks."""
    p, atk = cfg.privacy, cfg.attack
    bad = malicious_clients(cfg.federation.num_clients, atk.fraction, atk.seed) if atk.update_level else set()
    sigma = noise_multiplier(cfg) if p.dp == "local" else 0.0
    if not bad and p.dp != "local":
        return None

    def hook(update: Update, job: TrainJob) -> Update:
        if update.client_id in bad:
            gen = torch.Generator().manual_seed(derive_seed(atk.seed, job.round_idx, update.client_id, 31))
            update = apply_attack(update, atk, gen)
        if p.dp == "local":
            gen = round_generator(cfg.federation.seed, job.round_idx, f"local{update.client_id}")
            update.delta = privatize_local(update.delta, p.clip_norm, sigma, gen)
        return update

    return hook


def poison_data(world: World) -> set[int]:
    """Flip the labels of the malicious clients' training data (attack.kind label_flip)."""
    atk = world.cfg.attack
    if atk.kind != "label_flip":
        return set()
    bad = malicious_clients(world.cfg.federation.num_clients, atk.fraction, atk.seed)
    for cid in bad:
        world.data.clients[cid].train = poisoned(world.cfg, cid, world.data.clients[cid].train)
    return bad


def poisoned(cfg: ExperimentConfig, client_id: int, data: TokenizedSet) -> TokenizedSet:
    """``data`` as client ``client_id`` trains on it: labels flipped if it is a label-flipping attacker."""
    atk = cfg.attack
    if atk.kind != "label_flip" or data.labels is None:
        return data
    if client_id not in malicious_clients(cfg.federation.num_clients, atk.fraction, atk.seed):
        return data
    return TokenizedSet(data.input_ids, flip_labels(torch.tensor(data.labels), cfg.model.num_labels).tolist())
