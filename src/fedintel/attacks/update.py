"""Update-level (model poisoning) attacks: a malicious client transforms its honest update after training.

* ``sign_flip``: send ``-delta`` (reversed gradient; e.g. Damaskinos et al. 2018, Li et al. 2019 RSA).
* ``scale``: send ``factor * delta`` (boosting / model replacement; Bagdasaryan et al., "How To Backdoor
  Federated Learning", AISTATS 2020, and Bhagoji et al., ICML 2019).
* ``noise``: send pure Gaussian noise ``N(0, std^2)`` instead of the delta (the "Gaussian Byzantine" worker
  of Blanchard et al., NeurIPS 2017).

:class:`UpdateAttack` is the client mod that applies one of them for the malicious clients. Attacks never
mutate their input: they return a new ``Update``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fedintel.attacks.config import AttackConfig
from fedintel.seeding import derive_seed
from fedintel.types import TrainJob, Update


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


@dataclass(frozen=True)
class UpdateAttack:
    """Client mod: each client in ``malicious`` sends ``config``'s attack on its update; the others are honest.

    The noise of ``kind: noise`` is drawn from ``(attack.seed, round, client)``, so a resumed run repeats it.
    """

    config: AttackConfig
    malicious: frozenset[int]

    def __call__(self, update: Update, job: TrainJob) -> Update:
        if update.client_id not in self.malicious:
            return update
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, job.round_idx, update.client_id, 31))
        return apply_attack(update, self.config, gen)
