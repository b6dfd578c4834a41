"""Local DP as a client mod: each client clips its delta and adds its own Gaussian noise before upload.

After Flower's ``LocalDpMod`` (``flwr.client.mod.localdp_mod``). The arithmetic is
:func:`fedintel.privacy.dp.privatize_local`; the noise stream is tied to (run seed, round, client), so a
resumed run draws the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedintel.privacy.dp import privatize_local, round_generator
from fedintel.types import TrainJob, Update


@dataclass(frozen=True)
class LocalDPMod:
    """Client mod: ``delta -> clip(delta, clip_norm) + N(0, (noise_multiplier * clip_norm)^2)``.

    ``seed`` is the run's seed (``federation.seed``).
    """

    clip_norm: float
    noise_multiplier: float
    seed: int

    def __call__(self, update: Update, job: TrainJob) -> Update:
        gen = round_generator(self.seed, job.round_idx, f"local{update.client_id}")
        update.delta = privatize_local(update.delta, self.clip_norm, self.noise_multiplier, gen)
        return update
