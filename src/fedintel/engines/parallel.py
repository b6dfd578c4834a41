"""The local engine across worker processes: the clients of a round train in parallel on this machine.

Each worker is a spawned process that builds the run's world itself (base model, PEFT wrapper, data) on its
own device (``runtime.devices``) or on the CPU with ``runtime.threads`` torch threads (default 1), and then
runs jobs exactly as :class:`~fedintel.engines.local.LocalEngine` does, training and evaluation jobs alike. A
job's result depends only on the job (its seed comes from run seed, round and client), never on which worker
ran it, so a parallel run gives the sequential run's numbers; on the CPU they match bit for bit when the
sequential run also uses one thread.

Costs: one copy of the base model per worker, and a few seconds at start-up while the workers load it.
Adapter states travel through shared memory (torch.multiprocessing), so a job costs no copy of the model.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from fedintel.config import ExperimentConfig
from fedintel.engines.base import Engine
from fedintel.training.client import TrainingDiverged
from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import ClientFailure, EvalJob, EvalResult, TrainJob, Update

log = logging.getLogger(__name__)

_READY, _RESULT, _DIVERGED, _ERROR = "ready", "result", "diverged", "error"


def worker_config(cfg: ExperimentConfig, index: int) -> ExperimentConfig:
    """The config worker ``index`` builds its world from: its own device and thread count."""
    rt = cfg.runtime
    device = rt.devices[index] if rt.devices else rt.device
    runtime = rt.model_copy(update={"device": device, "threads": rt.threads or 1, "workers": 1, "devices": None})
    return cfg.model_copy(update={"runtime": runtime})


def _worker_main(cfg: ExperimentConfig, mods: ClientMods, index: int, jobs: Any, results: Any) -> None:
    """A worker process: build the world once, then train jobs (with the run's client mods) until told to stop."""
    from fedintel.engines.local import LocalEngine
    from fedintel.world import build_world

    try:
        torch.manual_seed(cfg.federation.seed)
        world = build_world(worker_config(cfg, index))
        engine = LocalEngine(world, mods)
    except Exception as err:  # reported to the run, which stops with the reason
        results.put((_ERROR, index, f"{type(err).__name__}: {err}"))
        return
    results.put((_READY, index, None))
    while True:
        item = jobs.get()
        if item is None:
            return
        pos, job = item
        try:
            results.put((_RESULT, pos, engine.run_eval(job) if isinstance(job, EvalJob) else engine.run_job(job)))
        except TrainingDiverged as err:
            results.put((_DIVERGED, pos, str(err)))
        except Exception as err:  # only evaluation raises here (a failing train job is a ClientFailure)
            results.put((_ERROR, pos, f"{type(err).__name__}: {err}"))


class ParallelEngine(Engine):
    """Runs the jobs of a round on ``runtime.workers`` processes (or one per ``runtime.devices`` entry).

    ``mods``: the clients' mods, sent to every worker (as :class:`~fedintel.engines.local.LocalEngine` takes them).
    """

    def __init__(self, cfg: ExperimentConfig, mods: ClientMods = NO_MODS, start_timeout_s: float = 600.0) -> None:
        self.cfg = cfg
        self.mods = mods
        self.num_workers = cfg.runtime.num_workers
        ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and CUDA state
        self.jobs = ctx.Queue()
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker_main, args=(cfg, mods, i, self.jobs, self.results), daemon=True,
                                  name=f"fedintel-worker-{i}") for i in range(self.num_workers)]
        for p in self.procs:
            p.start()
        ready = 0
        while ready < self.num_workers:
            kind, index, detail = self._get(start_timeout_s)
            if kind == _ERROR:
                self.close()
                raise RuntimeError(f"worker {index} could not start: {detail}")
            ready += kind == _READY
        log.info("parallel engine: %d workers ready", self.num_workers)

    def _get(self, timeout_s: float) -> tuple[str, int, Any]:
        """The next message from the workers; a worker that died is an error, not a hang."""
        waited = 0.0
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p.name for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"engine worker(s) {dead} exited unexpectedly") from None
                if waited >= timeout_s:
                    raise TimeoutError(f"no engine worker answered within {timeout_s:.0f} s") from None

    def train(
        self, jobs: list[TrainJob], on_done: Callable[[Update | ClientFailure], None] | None = None
    ) -> list[Update | ClientFailure]:
        for pos, job in enumerate(jobs):
            self.jobs.put((pos, job))
        results: list[Update | ClientFailure | None] = [None] * len(jobs)
        diverged: str | None = None
        for _ in jobs:
            kind, pos, payload = self._get(timeout_s=24 * 3600.0)
            if kind == _DIVERGED:
                diverged = diverged or payload
                results[pos] = ClientFailure(jobs[pos].client_id, payload)
                continue
            results[pos] = payload
            if on_done:
                on_done(payload)
        if diverged is not None:  # as in the sequential engine: a diverging loss stops the run
            raise TrainingDiverged(diverged)
        return [r for r in results if r is not None]

    def evaluate(self, jobs: list[EvalJob]) -> list[EvalResult | ClientFailure]:
        """Evaluate ``jobs`` on the workers; an evaluation that raises stops the run, as in the local engine."""
        for pos, job in enumerate(jobs):
            self.jobs.put((pos, job))
        results: list[EvalResult | ClientFailure | None] = [None] * len(jobs)
        error: str | None = None
        for _ in jobs:
            kind, pos, payload = self._get(timeout_s=24 * 3600.0)
            if kind == _ERROR:
                error = error or f"client {jobs[pos].client_id}: {payload}"
            else:
                results[pos] = payload
        if error is not None:
            raise RuntimeError(f"evaluation failed on an engine worker: {error}")
        return [r for r in results if r is not None]

    def close(self) -> None:
        for _ in self.procs:
            self.jobs.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
