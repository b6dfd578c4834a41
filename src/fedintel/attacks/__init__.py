"""Evaluation adversaries as client mods: malicious clients that poison their update or their training data.

:mod:`.config` holds the ``attack:`` section and who is malicious (no torch: the config imports it);
:mod:`.update` the update-level attacks (sign flip, scaling, noise), :mod:`.label_flip` the data-level one, and
:mod:`.mods` the client mods a run's ``attack`` section adds (:func:`~fedintel.attacks.mods.attack_mods`).
Names are loaded lazily.
"""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "AttackConfig": "config",
    "malicious_clients": "config",
    "apply_attack": "update",
    "gaussian_noise": "update",
    "scale": "update",
    "sign_flip": "update",
    "UpdateAttack": "update",
    "flip_labels": "label_flip",
    "LabelFlip": "label_flip",
    "attack_mods": "mods",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
