"""The embedded engine: every client trains and evaluates in this process on the one shared base model."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedintel.engines.base import Engine
from fedintel.training.client import TrainingDiverged
from fedintel.training.job import UpdateHook, run_eval_job, run_train_job
from fedintel.types import ClientFailure, EvalJob, EvalResult, TrainJob, Update
from fedintel.world import World

log = logging.getLogger(__name__)

__all__ = ["LocalEngine", "UpdateHook"]


class LocalEngine(Engine):
    """Runs jobs one after another (2 cores are better spent inside one torch op than across clients).

    ``update_hook`` lets experiments transform an update before it leaves the client (attacks, local DP).
    """

    def __init__(self, world: World, update_hook: UpdateHook | None = None) -> None:
        self.world = world
        self.update_hook = update_hook

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
                                 update_hook=self.update_hook)
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
        return run_eval_job(w.cfg, w.slot, client.train if job.split == "train" else client.eval, job, pad_id=w.pad_id)
