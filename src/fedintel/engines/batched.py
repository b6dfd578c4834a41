"""The local engine with batched clients (``runtime.client_batching``): up to N clients of a call train at once.

Whatever a scheme hands to :meth:`BatchedEngine.train` at once (a FedAvg round, a cluster's or an edge server's
clients) is cut into groups of N; each group trains through
:func:`~fedintel.training.batched.train_batched`: one forward and one backward over the shared base per
micro-batch for the whole group. Each client's work before and after training is the sequential engine's
(:func:`~fedintel.training.job.prepare_job` / :func:`~fedintel.training.job.finish_job`: rank slice, FedProx or
SCAFFOLD terms, wire bytes, the client mods: local DP and attacks), so it returns one :class:`Update` per client, as
:class:`~fedintel.engines.local.LocalEngine` does. The asynchronous scheme dispatches one client at a time, so
there it trains them one by one.

Anything it cannot batch trains one by one, with the reason logged once: prefix or prompt tuning, a
classification head, quantized or DoRA layers (:func:`~fedintel.training.batched.batching_problem`), a client
without data, or a group whose batched step raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedintel.engines.local import LocalEngine
from fedintel.training.batched import BatchJob, batching_problem, train_batched
from fedintel.training.client import TrainingDiverged
from fedintel.training.job import PreparedJob, finish_job, local_spec, prepare_job
from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import ClientFailure, TrainJob, Update
from fedintel.world import World

log = logging.getLogger(__name__)

AUTO_TOKENS = 16384
"""``client_batching: auto`` on an accelerator: clients per group so a combined micro-batch holds this many tokens."""


def group_size(world: World) -> int:
    """Clients per batched group for ``world``'s ``runtime.client_batching`` (1: one by one)."""
    setting = world.cfg.runtime.client_batching
    if setting == "off":
        return 1
    if setting == "auto":
        if world.runtime.device.type == "cpu":
            return 1  # a CPU step is compute-bound: batching gains nothing there and costs activations
        tokens = world.cfg.federation.micro_batch_size * world.cfg.data.max_length
        return max(1, AUTO_TOKENS // tokens)
    return int(setting)


class BatchedEngine(LocalEngine):
    """:class:`LocalEngine` that trains up to ``group_size(world)`` clients of each call together."""

    def __init__(self, world: World, mods: ClientMods = NO_MODS) -> None:
        super().__init__(world, mods)
        self.group = group_size(world)
        cfg = world.cfg
        if cfg.peft.method != "lora":
            self.problem = f"peft.method {cfg.peft.method}: only LoRA is batched (virtual tokens are not split per client)"
        else:
            self.problem = batching_problem(world.slot, cfg.model.task, cfg.model.gradient_checkpointing)
        if self.problem and self.group > 1:
            log.warning("runtime.client_batching: clients train one by one (%s)", self.problem)
        elif self.group == 1:
            log.info("runtime.client_batching %s: one client at a time on %s", cfg.runtime.client_batching,
                     world.runtime.device)

    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        if self.problem or self.group == 1:
            return super().train(jobs, on_done)
        results: list[Update | ClientFailure] = []
        for i in range(0, len(jobs), self.group):
            for result in self.run_group(jobs[i : i + self.group]):
                results.append(result)
                if on_done:
                    on_done(result)
        return results

    def run_group(self, jobs: list[TrainJob]) -> list[Update | ClientFailure]:
        """Train ``jobs`` together; clients without data (and a group that fails) train one by one."""
        w = self.world
        empty = [j for j in jobs if len(w.data.clients[j.client_id].train) == 0]
        batch = [j for j in jobs if j not in empty]
        if len(batch) < 2:
            return [self.run_job(j) for j in jobs]
        preps = [prepare_job(w.cfg, j) for j in batch]
        bjobs = [BatchJob(j.client_id, p.start, self.mods.train_data(j.client_id, w.data.clients[j.client_id].train),
                          j.seed(w.cfg.federation.seed), j.version, p.local_term)
                 for j, p in zip(batch, preps, strict=True)]
        try:
            outs = train_batched(w.slot, bjobs, local_spec(w.cfg), pad_id=w.pad_id, shape=w.shape)
        except Exception as err:  # never a wrong result: the group trains one by one instead
            log.warning("batched training of clients %s failed (%s: %s); training them one by one",
                        [j.client_id for j in batch], type(err).__name__, err)
            return [self.run_job(j) for j in jobs]
        done = {id(j): self._finish(j, p, out) for j, p, out in zip(batch, preps, outs, strict=True)}
        return [done[id(j)] if id(j) in done else self.run_job(j) for j in jobs]

    def _finish(self, job: TrainJob, prep: PreparedJob, out: Update | TrainingDiverged) -> Update | ClientFailure:
        """``out`` as the sequential engine would return it (diverged and crashing clients included)."""
        if isinstance(out, TrainingDiverged):
            if self.world.cfg.federation.on_client_diverged == "stop":
                raise out  # stops the run (the last good checkpoint is kept)
            log.warning("client %d diverged; its update is dropped: %s", job.client_id, out)
            return ClientFailure(job.client_id, str(out), kind="diverged")
        try:
            return finish_job(self.world.cfg, prep, out, job, self.mods)
        except Exception as err:
            log.warning("client %d failed: %s", job.client_id, err)
            return ClientFailure(job.client_id, f"{type(err).__name__}: {err}")
