"""The embedded engine: every client trains and evaluates in this process on the one shared base model."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedintel.engines.base import Engine
from fedintel.training.client import TrainingDiverged
from fedintel.training.job import run_eval_job, run_train_job
from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import ClientFailure, EvalJob, EvalResult, TrainJob, Update
from fedintel.world import World

log = logging.getLogger(__name__)


class LocalEngine(Engine):
    """Runs jobs one after another (2 cores are better spent inside one torch op than across clients).

    ``mods``: what every client does to its shard before training and to its update before upload (attacks,
    local DP; see :func:`fedintel.trust.build_client_mods`).
    """

    def __init__(self, world: World, mods: ClientMods = NO_MODS) -> None:
        self.world = world
        self.mods = mods

    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        results: list[Update | ClientFailure] = []
        for job in jobs:
            result = self.run_job(job)
            results.append(result)
            if on_done:
                on_done(result)
        return results

    def run_job(self, job: TrainJob) -> Update | ClientFailure:
        """Train one job on the shared base model; a crashing client becomes a :class:`ClientFailure`."""
        w = self.world
        try:
            return run_train_job(w.cfg, w.slot, w.data.clients[job.client_id].train, job,
                                 seed=job.seed(w.cfg.federation.seed), pad_id=w.pad_id, shape=w.shape,
                                 mods=self.mods)
        except TrainingDiverged as err:
            if w.cfg.federation.on_client_diverged == "stop":
                raise  # stops the run (the last good checkpoint is kept)
            log.warning("client %d diverged; its update is dropped: %s", job.client_id, err)
            return ClientFailure(job.client_id, str(err), kind="diverged")
        except Exception as err:  # a crashing client is dropped; the round goes on without it
            log.warning("client %d failed: %s", job.client_id, err)
            return ClientFailure(job.client_id, f"{type(err).__name__}: {err}")

    def evaluate(self, jobs: list[EvalJob]) -> list[EvalResult | ClientFailure]:
        return [self.run_eval(job) for job in jobs]

    def run_eval(self, job: EvalJob) -> EvalResult:
        """Evaluate one job on the client's shard in this process (an error here is a bug: it stops the run)."""
        w = self.world
        client = w.data.clients[job.client_id]
        data = client.train if job.split == "train" else client.eval
        return run_eval_job(w.cfg, w.slot, data, job, pad_id=w.pad_id, mods=self.mods)
