"""The local training step of one client: plain torch, short enough to read in one sitting.

The base model is shared by every simulated client; only the adapter tensors are swapped in before a
client trains and read back after, so memory grows by one adapter per client, not one model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.models.peft_builder import AdapterSlot
from fedintel.training.flops import ModelShape, train_flops
from fedintel.types import AdapterState, Update

if TYPE_CHECKING:
    from fedintel.optimizers.base import LocalTerm


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or Inf."""


@dataclass(frozen=True)
class LocalTrainSpec:
    """The local recipe: optimizer steps of a logical batch, accumulated over micro-batches."""

    steps: int
    batch_size: int
    micro_batch_size: int
    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    epochs: float | None = None

    def num_steps(self, num_examples: int) -> int:
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_examples / self.batch_size))


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's logical batch: fresh permutations, epoch after epoch."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, num_examples)
    order: list[int] = []
    while len(order) < size * steps:
        order += rng.permutation(num_examples).tolist()
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def train_local(
    slot: AdapterSlot,
    start: AdapterState,
    data: TokenizedSet,
    spec: LocalTrainSpec,
    *,
    client_id: int,
    base_version: int,
    seed: int,
    pad_id: int,
    task: str,
    shape: ModelShape | None = None,
    local_term: LocalTerm | None = None,
) -> Update:
    """Train the adapter ``start`` on ``data`` and return the client's :class:`Update` (a delta).

    ``local_term`` is a federated optimizer's client-side term (FedProx's proximal gradient, SCAFFOLD's drift
    correction): it touches the adapter's gradients before each step and its values after.
    """
    if len(data) == 0:
        raise ValueError(f"client {client_id} has no training examples")
    model, rt = slot.model, slot.runtime
    slot.set(start)
    torch.manual_seed(seed)  # dropout masks: deterministic per (run seed, round, client)
    params = list(slot.params.values())  # float32 master weights, whatever the base's precision
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    scaler = rt.grad_scaler()  # float16 only: scales the loss so small gradients survive
    steps = spec.num_steps(len(data))
    losses, tokens, max_len = [], 0, 0
    model.train()
    try:
        for batch_idx in batch_order(len(data), spec.batch_size, steps, seed):
            step_loss = 0.0
            for m in range(0, len(batch_idx), spec.micro_batch_size):
                micro = batch_idx[m : m + spec.micro_batch_size]
                batch = rt.to_device(collate(data, micro, pad_id, task))
                with rt.autocast():
                    loss = model(**batch).loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"client {client_id}: training loss is {loss.item()}")
                scaler.scale(loss * (len(micro) / len(batch_idx))).backward()
                step_loss += loss.item() * len(micro) / len(batch_idx)
                tokens += int(batch["attention_mask"].sum())
                max_len = max(max_len, batch["input_ids"].shape[1])
            scaler.unscale_(optimizer)  # float16: true gradients from here on (a no-op otherwise)
            if local_term is not None:
                with torch.no_grad():
                    local_term.before_step(slot.params)
            if spec.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            if local_term is not None:
                with torch.no_grad():
                    local_term.after_step(slot.params)
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
    finally:
        model.eval()
    delta = slot.get()  # one contiguous buffer, turned into the delta in place
    for k in delta:
        delta[k].sub_(start[k])
    flops = train_flops(shape, tokens, max_len) if shape is not None else 0.0
    return Update(
        client_id=client_id,
        delta=delta,
        num_samples=len(data),
        base_version=base_version,
        train_loss=float(np.mean(losses)),
        steps=steps,
        tokens=tokens,
        flops=flops,
    )
