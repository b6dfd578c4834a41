"""Secure aggregation as an aggregator: FedAvg (or DP-FedAvg) of pairwise-masked client updates.

The protocol itself is :mod:`fedintel.privacy.secagg` (Bonawitz et al., CCS 2017). :class:`SecureAggregator`
takes the place of the run's rule (the config admits only ``fedavg`` with it): the server learns the (weighted)
sum, never an update. With central DP the clients clip before masking and the server noises the unmasked sum.
Clients selected but dropped (network, failure) exercise the protocol's mask recovery.

:func:`masking_input` is the client's side: what it masks. The local simulation and a Flower SuperNode call
the same function, so both sum the same fixed-point words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.privacy.budget import noise_multiplier
from fedintel.privacy.dp import clip_delta, privatize_sum, round_generator
from fedintel.types import MASKED_KEY, AdapterState, Update

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


def masking_input(cfg: ExperimentConfig, delta: AdapterState, num_samples: int) -> AdapterState:
    """What a client masks under secure aggregation: its delta clipped to ``privacy.clip_norm`` (central DP:
    the server noises the unmasked sum), else ``w * delta`` and ``w`` (a weighted mean)."""
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
    engine). With ``remote`` (given by :func:`fedintel.trust.build_aggregator` when the engine masks on the
    clients, ``engine: flower``) the updates are masked vectors and only their unmasked sum is ever formed here.
    """

    name = "secure"

    def __init__(self, cfg: ExperimentConfig, remote: RemoteSum | None = None) -> None:
        self.cfg = cfg
        self.seed = cfg.federation.seed
        self.sigma = noise_multiplier(cfg) if cfg.privacy.dp == "central" else 0.0
        self.remote = remote

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
