"""Poisoning attacks for the robustness benchmark: who is malicious, and what they send.

Update-level (model poisoning) attacks transform a malicious client's honest :class:`~fedintel.types.Update`
after local training:

* ``sign_flip``: send ``-delta`` (reversed gradient; e.g. Damaskinos et al. 2018, Li et al. 2019 RSA).
* ``scale``: send ``factor * delta`` (boosting / model replacement; Bagdasaryan et al., "How To Backdoor
  Federated Learning", AISTATS 2020, and Bhagoji et al., ICML 2019).
* ``noise``: send pure Gaussian noise ``N(0, std^2)`` instead of the delta (the "Gaussian Byzantine" worker
  of Blanchard et al., NeurIPS 2017).

The data-level attack ``label_flip`` (Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated
Learning Systems", ESORICS 2020) changes a malicious client's training labels before it trains; apply
:func:`flip_labels` to its data shard. It only makes sense for ``model.task = classification``.

Attacks never mutate their input: they return a new ``Update`` (or tensor).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedintel.sections import Section
from fedintel.types import Update

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


def _with_delta(update: Update, delta: dict[str, torch.Tensor], tag: str) -> Update:
    metrics = {**update.metrics, "malicious": 1.0, f"attack_{tag}": 1.0}
    return dataclasses.replace(update, delta=delta, metrics=metrics)


def sign_flip(update: Update) -> Update:
    """The update with ``-delta``."""
    return _with_delta(update, {k: -v for k, v in update.delta.items()}, "sign_flip")


def scale(update: Update, factor: float) -> Update:
    """The update with ``factor * delta``."""
    return _with_delta(update, {k: v * factor for k, v in update.delta.items()}, "scale")


def gaussian_noise(update: Update, std: float, generator: torch.Generator) -> Update:
    """The update with its delta replaced by ``N(0, std^2)`` noise of the same shapes and dtypes, drawn in
    sorted key order from ``generator``."""
    if std < 0:
        raise ValueError(f"attack.noise_std must be >= 0, got {std}")
    noise = {
        k: (torch.randn(update.delta[k].shape, generator=generator, dtype=torch.float64) * std).to(
            update.delta[k].dtype
        )
        for k in sorted(update.delta)
    }
    return _with_delta(update, {k: noise[k] for k in update.delta}, "noise")


def apply_attack(update: Update, config: AttackConfig, generator: torch.Generator | None = None) -> Update:
    """Apply ``config``'s update-level attack to a malicious client's ``update``.

    ``label_flip`` and ``none`` return ``update`` unchanged (label flipping acts on the data beforehand).
    ``generator`` is needed for ``noise``; if omitted one is seeded from ``(config.seed, client_id)``.
    """
    if config.kind == "sign_flip":
        return sign_flip(update)
    if config.kind == "scale":
        return scale(update, config.scale)
    if config.kind == "noise":
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(config.seed * 1_000_003 + update.client_id)
        return gaussian_noise(update, config.noise_std, generator)
    return update


def flip_labels(
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    num_labels: int,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Poisoned copy of class ``labels`` (int64 tensor).

    Without ``rng``: the fixed permutation ``y -> num_labels - 1 - y`` (every label changes when
    ``num_labels`` is even; the middle class is kept when it is odd). With ``rng``: each label becomes a
    uniformly random *different* class. Negative labels (for example ``-100``, "ignore") are kept.
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be >= 2, got {num_labels}")
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).to(
        torch.int64
    )
    valid = y >= 0
    if bool((y[valid] >= num_labels).any()):
        raise ValueError(f"labels must be < num_labels={num_labels}")
    if rng is None:
        flipped = num_labels - 1 - y
    else:
        offset = torch.randint(1, num_labels, y.shape, generator=rng)
        flipped = (y + offset) % num_labels
    return torch.where(valid, flipped, y)
