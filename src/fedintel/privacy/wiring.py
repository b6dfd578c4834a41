"""Put the trust building blocks into a run: DP, secure aggregation and (for evaluation) attacks.

* ``privacy.dp: central`` without secure aggregation: the server clips, sums with equal weights and adds
  Gaussian noise (:class:`~fedintel.privacy.dp.DPAggregator`).
* ``privacy.secure_aggregation``: the server only learns the (weighted) sum through pairwise masks; with
  central DP the clients clip before masking and the server noises the unmasked sum. Clients selected but
  dropped (network, failure) exercise the protocol's mask recovery.
* ``privacy.dp: local``: every client clips and noises its own delta before upload (an update hook).
* ``attack``: malicious clients transform their updates (sign flip, scaling, noise) or train on flipped
  labels; this is how the robust rules are evaluated.

Epsilon is recomputed from the number of rounds done, so a resumed run reports the same values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedintel.aggregation.base import Aggregator
from fedintel.config import ExperimentConfig
from fedintel.data.tokenize import TokenizedSet
from fedintel.engines.base import TrainJob
from fedintel.privacy.attacks import apply_attack, flip_labels, malicious_clients
from fedintel.privacy.dp import DPAggregator, clip_delta, privatize_local, privatize_sum, round_generator
from fedintel.types import AdapterState, Update
from fedintel.world import World, derive_seed


def sample_rate(cfg: ExperimentConfig) -> float:
    return cfg.federation.clients_per_round / cfg.federation.num_clients


def noise_multiplier(cfg: ExperimentConfig) -> float:
    return cfg.privacy.resolve_noise_multiplier(cfg.federation.rounds, sample_rate(cfg))


class SecureAggregator(Aggregator):
    """FedAvg (or DP-FedAvg) computed through pairwise-masked secure aggregation."""

    name = "secure"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.seed = cfg.federation.seed
        self.round_idx = 0
        self.round_dropped: list[int] = []
        self.sigma = noise_multiplier(cfg) if cfg.privacy.dp == "central" else 0.0
        self.last_stats: dict[str, float] = {}

    def set_round(self, round_idx: int) -> None:
        self.round_idx = round_idx

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState) -> AdapterState:
        from fedintel.privacy.secagg import secure_mean, secure_sum

        p = self.cfg.privacy
        common = {"dropped_ids": self.round_dropped, "threshold": p.secagg_threshold, "frac_bits": p.secagg_frac_bits}
        if p.dp == "central":
            clipped = [Update(u.client_id, clip_delta(u.delta, p.clip_norm), u.num_samples, u.base_version,
                              u.train_loss, u.steps, u.tokens) for u in updates]
            total = secure_sum(clipped, self.round_idx, self.seed, **common)
            gen = round_generator(self.seed, self.round_idx)
            out = privatize_sum({k: v.double() for k, v in total.items()}, self.cfg.federation.clients_per_round,
                                p.clip_norm, self.sigma, gen)
        else:
            out = secure_mean(updates, self.round_idx, self.seed, weighted=self.cfg.aggregation.weighted, **common)
        self.last_stats = {"secagg_clients": float(len(updates)), "secagg_dropped": float(len(self.round_dropped))}
        return {k: out[k].to(global_state[k].dtype) for k in global_state}


def wrap_aggregator(cfg: ExperimentConfig, rule: Aggregator) -> Aggregator:
    """Replace or wrap ``rule`` as the privacy section asks."""
    p = cfg.privacy
    if p.secure_aggregation:
        return SecureAggregator(cfg)
    if p.dp == "central":
        return DPAggregator(p.clip_norm, noise_multiplier(cfg), cfg.federation.clients_per_round, cfg.federation.seed)
    return rule


def epsilon_after(cfg: ExperimentConfig, rounds_done: int) -> float | None:
    """(epsilon at privacy.delta) after ``rounds_done`` rounds, or None without DP."""
    p = cfg.privacy
    if p.dp == "none":
        return None
    from fedintel.privacy.accountant import compute_epsilon

    sigma = noise_multiplier(cfg)
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
