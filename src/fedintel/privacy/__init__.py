"""Trust building blocks: differential privacy, privacy accounting, secure aggregation, and attacks.

Names are loaded lazily, so ``fedintel.privacy.config`` stays cheap to import for config parsing.
Importing :mod:`fedintel.privacy.dp` registers the ``dp_fedavg`` aggregator.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "PrivacyAccountant": "accountant",
    "compute_epsilon": "accountant",
    "noise_for_target_epsilon": "accountant",
    "AttackConfig": "attacks",
    "apply_attack": "attacks",
    "flip_labels": "attacks",
    "malicious_clients": "attacks",
    "PrivacyConfig": "config",
    "DPAggregator": "dp",
    "add_gaussian_noise": "dp",
    "clip_delta": "dp",
    "privatize_local": "dp",
    "privatize_sum": "dp",
    "SecAggClient": "secagg",
    "SecAggError": "secagg",
    "SecAggServer": "secagg",
    "secure_mean": "secagg",
    "secure_sum": "secagg",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
