"""Privacy: differential privacy (central as an aggregator wrapper, local as a client mod), privacy accounting
and secure aggregation (an aggregator over pairwise-masked updates).

:mod:`.config` is the ``privacy:`` section; :mod:`.dp` clipping and noise and :class:`~.dp.DPAggregator`;
:mod:`.local_dp` the client mod; :mod:`.secagg` the protocol and :mod:`.secure_aggregator` the aggregator;
:mod:`.accountant` epsilon of Gaussian mechanisms and :mod:`.budget` a run's sigma and epsilon so far. Which of
them a run uses is declared in :mod:`fedintel.trust`. Names are loaded lazily, so ``fedintel.privacy.config``
stays cheap to import for config parsing.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "PrivacyAccountant": "accountant",
    "compute_epsilon": "accountant",
    "noise_for_target_epsilon": "accountant",
    "PrivacyConfig": "config",
    "DPAggregator": "dp",
    "add_gaussian_noise": "dp",
    "clip_delta": "dp",
    "privatize_local": "dp",
    "privatize_sum": "dp",
    "LocalDPMod": "local_dp",
    "PrivacyLedger": "budget",
    "SecureAggregator": "secure_aggregator",
    "SecAggClient": "secagg",
    "SecAggError": "secagg",
    "SecAggServer": "secagg",
    "secure_mean": "secagg",
    "secure_sum": "secagg",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
