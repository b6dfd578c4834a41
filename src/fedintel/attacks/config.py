"""The ``attack:`` section of an experiment file, and who is malicious.

No torch here: the experiment config imports this module, and light commands (``fedintel validate``,
``--help``) must stay light.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from fedintel.sections import Section

AttackKind = Literal["none", "sign_flip", "scale", "noise", "label_flip"]


class AttackConfig(Section):
    """The ``attack:`` section of an experiment file: which clients are malicious and what they do."""

    kind: AttackKind = Field("none", description="none | sign_flip | scale | noise | label_flip.")
    fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of all clients that are malicious (rounded half up; at least one if > 0).",
    )
    scale: float = Field(10.0, description="Multiplier of the delta, for kind=scale (negative also flips).")
    noise_std: float = Field(
        1.0, ge=0.0, description="Std of the Gaussian sent instead of the delta (kind=noise)."
    )
    seed: int = Field(0, description="Chooses the malicious clients and the attack noise.")

    @property
    def active(self) -> bool:
        """True if some client attacks (``kind != 'none'`` and ``fraction > 0``)."""
        return self.kind != "none" and self.fraction > 0

    @property
    def update_level(self) -> bool:
        """True for attacks applied to the update (``apply_attack``) rather than to the data."""
        return self.kind in ("sign_flip", "scale", "noise")


def malicious_clients(num_clients: int, fraction: float, seed: int) -> set[int]:
    """The ids in ``range(num_clients)`` of the malicious clients: ``round(fraction * num_clients)`` (half up)
    of them, at least one when ``fraction > 0``, chosen uniformly at random by ``seed``."""
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"attack.fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or num_clients == 0:
        return set()
    count = min(num_clients, max(1, math.floor(fraction * num_clients + 0.5)))
    rng = np.random.default_rng(seed)
    return {int(i) for i in rng.choice(num_clients, size=count, replace=False)}
