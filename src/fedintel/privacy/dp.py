"""Client-level differential privacy for federated rounds: clipping and Gaussian noise.

Central DP (DP-FedAvg; McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018): every client delta is clipped to L2 norm ``C`` (over the whole adapter), the server sums
the clipped deltas, divides by a *fixed* denominator ``m`` (the expected number of clients per round) and adds
``N(0, (sigma * C / m)^2)`` to every coordinate. Adding or removing one client changes the sum by at most
``C``, so this is the Gaussian mechanism with noise multiplier ``sigma``; the accountant
(:mod:`fedintel.privacy.accountant`) turns ``sigma``, the sampling rate and the rounds into epsilon.
Updates are weighted *equally*: weighting by ``num_samples`` would let one client's weight, and so the
sensitivity, grow without bound. The noise is added by the server, which must be trusted with the noisy sum
(with secure aggregation it only ever sees the sum; see :func:`privatize_sum`).

Local DP (:func:`privatize_local`): each client clips and adds ``N(0, (sigma * C)^2)`` before upload, so the
server is not trusted; the price is noise ``sqrt(m)`` times larger in the average. Account for it with
:meth:`PrivacyAccountant.for_local_dp`.

All noise is drawn from a caller-supplied ``torch.Generator`` (CPU) over the tensors in sorted key order,
so the same seed gives the same noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.norm_bound import clip_to_norm
from fedintel.aggregation.validate import update_norm
from fedintel.types import AdapterState, Update


def clip_delta(delta: AdapterState, clip_norm: float) -> AdapterState:
    """``delta`` scaled so its global L2 norm (all tensors together) is at most ``clip_norm``."""
    return clip_to_norm(delta, clip_norm)


def gaussian_noise_like(state: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """Independent ``N(0, std^2)`` per coordinate, shaped like ``state``, drawn in sorted key order (float64)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    out: AdapterState = {}
    for key in sorted(state):
        ref = state[key]
        out[key] = torch.randn(ref.shape, generator=generator, dtype=torch.float64) * std
    return {k: out[k] for k in state}


def add_gaussian_noise(state: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """``state + N(0, std^2)`` per coordinate, noise drawn from ``generator``; keeps each tensor's dtype."""
    noise = gaussian_noise_like(state, std, generator)
    return {k: (v.to(torch.float64) + noise[k]).to(v.dtype) for k, v in state.items()}


def privatize_sum(
    total: AdapterState,
    expected_clients: float,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> AdapterState:
    """Server side of central DP: ``total / m + N(0, (sigma * C / m)^2)`` with ``m = expected_clients``.

    ``total`` must be the sum of deltas each already clipped to ``clip_norm`` (for example the output of
    :func:`fedintel.privacy.secagg.secure_sum` over clipped deltas).
    """
    if not expected_clients > 0:
        raise ValueError(f"expected_clients must be positive, got {expected_clients}")
    mean = {k: v.to(torch.float64) / expected_clients for k, v in total.items()}
    std = noise_multiplier * clip_norm / expected_clients
    noisy = add_gaussian_noise(mean, std, generator)
    return {k: noisy[k].to(total[k].dtype) for k in total}


def privatize_local(
    delta: AdapterState, clip: float, sigma: float, generator: torch.Generator
) -> AdapterState:
    """Client side of local DP: ``clip_delta(delta, clip) + N(0, (sigma * clip)^2)`` per coordinate."""
    return add_gaussian_noise(clip_delta(delta, clip), sigma * clip, generator)


def round_generator(seed: int, round_idx: int, stream: str = "dp") -> torch.Generator:
    """A CPU generator seeded from ``(seed, round_idx, stream)``, so a resumed run draws the same noise."""
    digest = hashlib.sha256(f"fedintel|{stream}|{seed}|{round_idx}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


class DPAggregator(Aggregator):
    """Central client-level DP-FedAvg (McMahan et al. 2018): clip, equal-weight sum, fixed denominator, noise.

    Args:
        clip_norm: ``C``, the L2 bound on each client delta.
        noise_multiplier: ``sigma``; noise std on the *sum* is ``sigma * C``, on the average ``sigma * C / m``.
        expected_clients: ``m``, the fixed denominator (``clients_per_round``, or ``q * num_clients``). If
            ``None``, the number of updates received is used, which reveals the participant count; fine for
            fixed-size sampling but not what the Poisson accountant assumes.
        seed: seeds the noise. Each :meth:`aggregate` call advances an internal round counter; call
            :class:`RoundContext` with the round index to tie the noise to it (needed for bit-identical resumes).

    Each call writes ``dp_clipped_fraction`` and ``dp_mean_norm`` (pre-clip) into its context's ``stats`` for the
    metrics store.
    """

    def __init__(
        self,
        clip_norm: float = 1.0,
        noise_multiplier: float = 1.0,
        expected_clients: float | None = None,
        seed: int = 0,
    ) -> None:
        if not clip_norm > 0:
            raise ValueError(f"privacy.clip_norm must be positive, got {clip_norm}")
        if not noise_multiplier >= 0:
            raise ValueError(f"privacy.noise_multiplier must be >= 0, got {noise_multiplier}")
        if expected_clients is not None and not expected_clients > 0:
            raise ValueError(f"expected_clients must be positive, got {expected_clients}")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.expected_clients = expected_clients
        self.seed = seed
        self._round = 0

    def aggregate(self, updates: Sequence[Update], global_state: AdapterState,
                  ctx: RoundContext | None = None) -> AdapterState:
        if not updates:
            raise ValueError("DP aggregation of no updates")
        norms = [update_norm(u.delta) for u in updates]
        clipped = [clip_delta(u.delta, self.clip_norm) for u in updates]
        total: AdapterState = {}
        for key, ref in clipped[0].items():
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for c in clipped:
                acc += c[key].to(torch.float64)
            total[key] = acc
        m = self.expected_clients if self.expected_clients is not None else float(len(updates))
        if ctx is not None:  # the round's noise stream, so a resumed run draws the same noise
            self._round = ctx.round_idx
        gen = round_generator(self.seed, self._round)
        self._round += 1
        out = privatize_sum(total, m, self.clip_norm, self.noise_multiplier, gen)
        if ctx is not None:
            ctx.stats.update(dp_clipped_fraction=sum(n > self.clip_norm for n in norms) / len(norms),
                             dp_mean_norm=sum(norms) / len(norms))
        return {k: out[k].to(updates[0].delta[k].dtype) for k in out}
