"""One client's work for a training or evaluation job, shared by every engine (local and Flower).

The steps around :func:`~fedintel.training.client.train_local` that decide what a client sends: the LoRA
rank slice it trains (``peft.client_ranks``, heterogeneous devices), the delta against the full global
adapter it received with a rank-sized wire size, then the client's mods (:mod:`fedintel.training.mods`:
local DP noise, attacks). Every engine calls :func:`run_train_job` (the batched engine its two halves,
:func:`prepare_job` and :func:`finish_job`, around a batched trainer), so they do the same work by construction;
and :func:`run_eval_job` for an :class:`~fedintel.types.EvalJob` (per-client evaluation, IFCA's cluster pick).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedintel.config import ExperimentConfig
from fedintel.data.tokenize import TokenizedSet
from fedintel.models.lora_rank import lora_wire_bytes, truncate_rank
from fedintel.models.peft_builder import AdapterSlot
from fedintel.optimizers.base import FederatedOptimizer, LocalTerm
from fedintel.optimizers.builtin import build_optimizer
from fedintel.training.client import LocalTrainSpec, train_local
from fedintel.training.evaluate import evaluate, pick_loss
from fedintel.training.flops import ModelShape
from fedintel.training.mods import NO_MODS, ClientMods
from fedintel.types import AdapterState, EvalJob, EvalResult, TrainJob, Update


def local_spec(cfg: ExperimentConfig) -> LocalTrainSpec:
    """The local-training recipe of ``cfg.federation``."""
    f = cfg.federation
    return LocalTrainSpec(
        steps=f.local_steps, batch_size=f.batch_size, micro_batch_size=f.micro_batch_size, lr=f.lr,
        weight_decay=f.weight_decay, max_grad_norm=f.max_grad_norm, epochs=f.local_epochs,
    )


def client_rank(cfg: ExperimentConfig, client_id: int) -> int | None:
    """The LoRA rank client ``client_id`` trains with (``peft.client_ranks``), or None for full rank."""
    ranks = getattr(cfg.peft, "client_ranks", None)  # a LoRA knob
    return ranks[client_id % len(ranks)] if ranks else None


@dataclass
class PreparedJob:
    """What a client sets up before training: its start state (rank slice), optimizer and local term."""

    start: AdapterState
    rank: int | None
    optimizer: FederatedOptimizer
    local_term: LocalTerm | None


def prepare_job(cfg: ExperimentConfig, job: TrainJob) -> PreparedJob:
    """The rank slice ``job``'s client trains and its federated optimizer's local term."""
    rank = client_rank(cfg, job.client_id)
    start = truncate_rank(job.state, rank) if rank is not None else job.state
    opt = build_optimizer(cfg.optimizer)  # FedProx / SCAFFOLD act on the client too
    return PreparedJob(start, rank, opt, opt.local_term(start, job.extras, cfg.federation.lr))


def finish_job(cfg: ExperimentConfig, prepared: PreparedJob, update: Update, job: TrainJob,
               mods: ClientMods = NO_MODS) -> Update:
    """The update the client sends: optimizer uploads, the delta against the full global adapter, its mods."""
    update = prepared.optimizer.finish_update(update, prepared.start, job.extras, cfg.federation.lr)
    if prepared.rank is not None:  # the delta is relative to the global adapter the client received
        update.delta = {k: update.delta[k] + (prepared.start[k] - job.state[k]) for k in job.state}
        update.wire_bytes = lora_wire_bytes(update.delta, prepared.rank)
    return mods.finish(update, job)


def run_train_job(
    cfg: ExperimentConfig, slot: AdapterSlot, data: TokenizedSet, job: TrainJob, *, seed: int, pad_id: int,
    shape: ModelShape, mods: ClientMods = NO_MODS,
) -> Update:
    """Train ``job``'s client on its shard ``data`` (after its data mods) and return the update it would send."""
    data = mods.train_data(job.client_id, data)
    prep = prepare_job(cfg, job)
    update = train_local(slot, prep.start, data, local_spec(cfg), client_id=job.client_id, base_version=job.version,
                         seed=seed, pad_id=pad_id, task=cfg.model.task, shape=shape, local_term=prep.local_term)
    return finish_job(cfg, prep, update, job, mods)


def run_eval_job(cfg: ExperimentConfig, slot: AdapterSlot, data: TokenizedSet, job: EvalJob, *, pad_id: int,
                 mods: ClientMods = NO_MODS) -> EvalResult:
    """Evaluate each adapter of ``job`` on ``data`` (the client's ``job.split``) and return the numbers it sends.

    On its training rows the client sees what it trains on: the rows after its data mods (a label flipper's
    flipped labels, as in IFCA's pick)."""
    if job.split == "train":
        data = mods.train_data(job.client_id, data)
    model, task, out = slot.model, cfg.model.task, []
    batches = getattr(cfg.clustering, "ifca_eval_batches", None)  # an IFCA knob
    if job.measure == "pick_loss" and batches is None:
        raise ValueError(f"a pick_loss evaluation needs clustering.method ifca, not {cfg.clustering.method}")
    for state in job.states:
        slot.set(state)
        if job.measure == "pick_loss":
            out.append({"loss": pick_loss(model, data, task=task, pad_id=pad_id, runtime=slot.runtime,
                                          micro_batch_size=cfg.federation.micro_batch_size, batches=batches)})
        else:
            out.append(evaluate(model, data, task=task, pad_id=pad_id, batch_size=cfg.eval.batch_size,
                                max_samples=cfg.eval.max_samples, runtime=slot.runtime))
    return EvalResult(job.client_id, out)
