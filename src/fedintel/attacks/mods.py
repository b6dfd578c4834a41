"""The client mods a run's ``attack`` section adds: who is malicious, and which mod they apply."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedintel.attacks.config import malicious_clients
from fedintel.attacks.label_flip import LabelFlip
from fedintel.attacks.update import UpdateAttack
from fedintel.training.mods import NO_MODS, ClientMods

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig


def attack_mods(cfg: ExperimentConfig) -> ClientMods:
    """An update attack (sign flip, scale, noise) or label flipping for ``cfg``'s malicious clients; none else."""
    atk = cfg.attack
    if not (atk.update_level or atk.kind == "label_flip"):
        return NO_MODS
    bad = frozenset(malicious_clients(cfg.federation.num_clients, atk.fraction, atk.seed))
    if not bad:
        return NO_MODS
    if atk.kind == "label_flip":
        return ClientMods(data=(LabelFlip(cfg.model.num_labels, bad),))
    return ClientMods(update=(UpdateAttack(atk, bad),))
