"""A run's trust set-up, declared once: the aggregator wrappers and client mods its ``privacy`` and ``attack``
sections add.

After Flower, where DP and secure aggregation wrap a strategy (``DifferentialPrivacyServerSideFixedClipping``)
and act on the client through mods (``LocalDpMod``, ``secaggplus_mod``):

* ``privacy.dp: central`` without secure aggregation: the server clips, sums with equal weights and adds
  Gaussian noise (:class:`~fedintel.privacy.dp.DPAggregator`).
* ``privacy.secure_aggregation``: the server only learns the (weighted) sum through pairwise masks
  (:class:`~fedintel.privacy.secure_aggregator.SecureAggregator`); with central DP the clients clip before
  masking and the server noises the unmasked sum.
* ``privacy.dp: local``: every client clips and noises its own delta before upload
  (:class:`~fedintel.privacy.local_dp.LocalDPMod`).
* ``attack``: malicious clients transform their updates or train on flipped labels
  (:func:`fedintel.attacks.mods.attack_mods`); this is how the robust rules are evaluated. The attack acts
  first, so under local DP an attacker's upload is noised like any other.

Both DP-FedAvg and secure aggregation compute their own equal-weight or weighted sum in place of the rule
(the config admits only ``aggregation.rule: fedavg`` with them). Epsilon is the business of
:mod:`fedintel.privacy.budget`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedintel.attacks.mods import attack_mods
from fedintel.privacy.budget import noise_multiplier
from fedintel.privacy.dp import DPAggregator
from fedintel.privacy.local_dp import LocalDPMod
from fedintel.privacy.secure_aggregator import RemoteSum, SecureAggregator
from fedintel.training.mods import ClientMods

if TYPE_CHECKING:
    from fedintel.aggregation.base import Aggregator
    from fedintel.config import ExperimentConfig
    from fedintel.engines.base import Engine


def wrap_aggregator(cfg: ExperimentConfig, rule: Aggregator, remote: RemoteSum | None = None) -> Aggregator:
    """The run's aggregator: ``rule``, or the privacy wrapper the ``privacy`` section asks for in its place.

    ``remote``: under secure aggregation, the sum unmasked with the clients themselves (see
    :func:`clients_unmask`); without it the protocol is simulated in this process.
    """
    p = cfg.privacy
    if p.secure_aggregation:
        return SecureAggregator(cfg, remote)
    if p.dp == "central":
        return DPAggregator(p.clip_norm, noise_multiplier(cfg), cfg.federation.clients_per_round, cfg.federation.seed)
    return rule


def clients_unmask(cfg: ExperimentConfig, engine: Engine) -> RemoteSum | None:
    """The engine's secure sum when its clients mask their own updates (``engine: flower``), else None."""
    remote = getattr(engine, "secure_sum", None)
    if cfg.privacy.secure_aggregation and remote is not None and getattr(engine, "secagg", None) is not None:
        return remote  # type: ignore[no-any-return]
    return None


def build_client_mods(cfg: ExperimentConfig) -> ClientMods:
    """What every client does around training: the attack (malicious clients only), then local DP noise."""
    mods = attack_mods(cfg)
    p = cfg.privacy
    if p.dp == "local":
        mods = mods + ClientMods(update=(LocalDPMod(p.clip_norm, noise_multiplier(cfg), cfg.federation.seed),))
    return mods
