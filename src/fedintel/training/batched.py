"""Batched multi-client LoRA training: the clients of a round share one forward and one backward.

The frozen base is the same for every client; only the LoRA factors differ. So instead of training N clients
one after another (N small passes that leave an accelerator idle), their micro-batches are concatenated into
one batch that goes through the base in one forward and one backward, and each LoRA layer applies client
``c``'s factors to client ``c``'s rows only: ``x_c @ A_c^T @ B_c^T * scaling``, with the factors of the clients
in the batch stacked as ``[N, r, in]`` / ``[N, out, r]`` and applied by ``torch.bmm`` (ASPEN/mLoRA's idea:
Ye et al., "mLoRA: Fine-Tuning LoRA Adapters via Highly-Efficient Pipeline Parallelism in Multiple GPUs",
VLDB 2025; LoRAFusion, Zhu et al. 2025). Rows never interact in a transformer, so client ``c``'s gradients
come from its own rows only.

Everything else stays per client, as in :func:`~fedintel.training.client.train_local`: each client has its own
leaf tensors, AdamW state, loss scaler, data order (:func:`batch_order` with its own seed), number of steps
(clients that finished simply leave the batch), gradient clipping by its own norm and federated-optimizer term.
Each client's loss is its own token mean over each of its micro-batches, computed from per-token losses (the
model's built-in loss would average over the whole batch). Heterogeneous ranks need nothing extra: a rank-``k``
client's start state has zeros beyond ``k`` (:func:`~fedintel.aggregation.lora_exact.truncate_rank`), and those
zeros get exactly zero gradients here too (no mixing across clients), so they stay zero.

Equivalence: with LoRA dropout 0 every client's update equals the sequential loop's up to float32 rounding
(a batched matmul sums in another order: relative differences around 1e-7). With dropout > 0 each client
draws its masks from its own generator seeded like the sequential loop, with its own micro-batch's shape and
in the same order, so on the CPU the masks are the sequential loop's; on CUDA the sequential loop's fused
dropout kernel draws differently, so masks differ there (same distribution, still deterministic per client).

Limits (the caller checks :func:`batching_problem` and trains one by one where it says why): plain LoRA
``Linear`` layers only (no DoRA, LoRA bias, quantized or embedding layers), causal language modelling, no
trainable tensor besides the LoRA factors (a classification head), no gradient checkpointing with dropout > 0.
A combined micro-batch is padded to its longest row, so on text of uneven lengths it computes more padding than
the sequential loop, and its activations grow with the number of clients batched.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.models.peft_builder import AdapterSlot
from fedintel.optimizers.base import LocalTerm
from fedintel.training.client import LocalTrainSpec, TrainingDiverged, batch_order
from fedintel.training.flops import ModelShape, train_flops
from fedintel.types import AdapterState, Update

IGNORE = -100


@dataclass
class BatchJob:
    """One client's share of a batched run: what :func:`train_local` takes for a single client."""

    client_id: int
    start: AdapterState
    data: TokenizedSet
    seed: int
    base_version: int
    local_term: LocalTerm | None = None


@dataclass
class _LoraModule:
    module: LoraLinear
    adapter: str
    key_a: str
    key_b: str


def lora_modules(slot: AdapterSlot) -> tuple[list[_LoraModule], str | None]:
    """The LoRA layers of ``slot``'s model and, if it cannot be batched, the reason why."""
    found: list[_LoraModule] = []
    covered: set[str] = set()
    for name, module in slot.model.named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        if type(module) is not LoraLinear:
            return [], f"LoRA layer {name} is a {type(module).__name__}, not a plain LoRA Linear"
        active = [a for a in module.active_adapters if a in module.lora_A]
        if len(active) != 1:
            return [], f"LoRA layer {name} has {len(active)} active adapters"
        adapter = active[0]
        if adapter in module.lora_variant or module.lora_B[adapter].bias is not None or module.merged:
            return [], f"LoRA layer {name} uses a variant (DoRA), a LoRA bias or merged weights"
        key_a, key_b = f"{name}.lora_A.{adapter}.weight", f"{name}.lora_B.{adapter}.weight"
        if key_a not in slot.params or key_b not in slot.params:
            return [], f"LoRA layer {name}'s factors are not trainable tensors of the adapter"
        found.append(_LoraModule(module, adapter, key_a, key_b))
        covered |= {key_a, key_b}
    other = sorted(slot.params.keys() - covered)
    if other:
        return [], f"trainable tensors besides LoRA factors ({other[0]}, ...) are not batched"
    if not found:
        return [], "the model has no LoRA layers"
    return found, None


def batching_problem(slot: AdapterSlot, task: str, gradient_checkpointing: bool = False) -> str | None:
    """Why clients of this model cannot train batched (``None``: they can)."""
    if task != "causal_lm":
        return f"model.task {task}: only causal language modelling is batched"
    modules, problem = lora_modules(slot)
    if problem:
        return problem
    dropout = any(isinstance(m.module.lora_dropout[m.adapter], torch.nn.Dropout)
                  and m.module.lora_dropout[m.adapter].p > 0 for m in modules)
    if gradient_checkpointing and dropout:
        return "model.gradient_checkpointing with peft.dropout > 0: recomputation would redraw per-client masks"
    return None


@dataclass
class _Client:
    """One client's training state inside a batched run."""

    job: BatchJob
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps: int
    micros: list[list[list[int]]]
    """Per step, the micro-batches (example indices) of its logical batch."""
    step_sizes: list[int]
    generator: torch.Generator
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    max_len: int = 0
    step_loss: float = 0.0
    failed: TrainingDiverged | None = None


@dataclass
class _Layout:
    """Who owns which rows of the current combined micro-batch (clients in row order)."""

    clients: list[_Client]
    rows: list[int]
    widths: list[int]
    index: torch.Tensor | None
    """Row -> position in ``clients`` when clients have unequal row counts (else None: equal segments)."""
    grouped: bool
    """Apply the factors with batched matmuls (else one pair of matmuls per client)."""


class _BatchedLora:
    """Replaces every LoRA layer's forward with a per-client one while training is batched."""

    def __init__(self, modules: list[_LoraModule], grouped: bool) -> None:
        self.modules = modules
        self.grouped = grouped
        self.layout: _Layout | None = None

    @contextmanager
    def installed(self) -> Iterator[_BatchedLora]:
        saved = [m.module.__dict__.get("forward") for m in self.modules]
        for m in self.modules:
            m.module.forward = types.MethodType(self._forward_for(m), m.module)
        try:
            yield self
        finally:
            for m, old in zip(self.modules, saved, strict=True):
                if old is None:
                    del m.module.forward
                else:
                    m.module.forward = old

    def _forward_for(self, m: _LoraModule):  # noqa: ANN202 - a bound forward
        def forward(module: LoraLinear, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            layout = self.layout
            if layout is None:
                raise RuntimeError("batched LoRA forward called outside a batched step")
            result = module.base_layer(x, *args, **kwargs)
            x = module._cast_input_dtype(x, module.lora_A[m.adapter].weight.dtype)
            x = self._dropout(x, module.lora_dropout[m.adapter], layout)
            a = [c.params[m.key_a] for c in layout.clients]
            b = [c.params[m.key_b] for c in layout.clients]
            if layout.grouped:
                lora = self._apply(x, torch.stack(a), torch.stack(b), layout)  # factors [N, r, in], [N, out, r]
            else:  # one pair of matmuls per client: the sequential loop's own kernels
                lora = torch.cat([F.linear(F.linear(xc, ac), bc)
                                  for xc, ac, bc in zip(x.split(layout.rows), a, b, strict=True)])
            return (result + lora * module.scaling[m.adapter]).to(result.dtype)

        return forward

    @staticmethod
    def _apply(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """``x_c @ A_c^T @ B_c^T`` for each client's rows of ``x`` ([rows, ..., in])."""
        rows, d_in = x.shape[0], x.shape[-1]
        if layout.index is None:  # equal segments: one [N, rows_c * T, in] batched matmul
            xs = x.reshape(len(layout.clients), -1, d_in)
            out = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2))
        else:  # unequal segments: each row gathers its client's factors
            xs = x.reshape(rows, -1, d_in)
            out = torch.bmm(torch.bmm(xs, a[layout.index].transpose(1, 2)), b[layout.index].transpose(1, 2))
        return out.reshape(*x.shape[:-1], b.shape[1])

    @staticmethod
    def _dropout(x: torch.Tensor, dropout: torch.nn.Module, layout: _Layout) -> torch.Tensor:
        """Each client's masks from its own generator, drawn at its own micro-batch's shape."""
        if not isinstance(dropout, torch.nn.Dropout) or dropout.p == 0 or not dropout.training:
            return x
        if x.dim() != 3:
            raise RuntimeError(f"batched LoRA dropout expects [rows, tokens, features] inputs, got {tuple(x.shape)}")
        p, start = dropout.p, 0
        mask = torch.ones_like(x)  # padding beyond a client's own width: any value (no loss flows there)
        for c, n, width in zip(layout.clients, layout.rows, layout.widths, strict=True):
            own = torch.empty((n, width, x.shape[2]), dtype=x.dtype, device=x.device)
            mask[start : start + n, :width] = own.bernoulli_(1 - p, generator=c.generator).div_(1 - p)
            start += n
        return x * mask


def _client_losses(logits: torch.Tensor, labels: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Each client's mean next-token loss over its rows (Hugging Face's causal-LM loss, per client)."""
    shift = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    tok = F.cross_entropy(logits.float().flatten(0, 1), shift.flatten(), ignore_index=IGNORE, reduction="none")
    tok = tok.view(shift.shape)
    sums = torch.stack([s.sum() for s in tok.split(rows)])
    counts = torch.stack([s.sum() for s in (shift != IGNORE).split(rows)])
    return sums / counts


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t


def _flat_copy(params: dict[str, torch.nn.Parameter]) -> AdapterState:
    """The adapter as float32 CPU views into one buffer (as :meth:`AdapterSlot.get` returns it)."""
    flat = torch.empty(sum(p.numel() for p in params.values()), dtype=torch.float32)
    out, offset = {}, 0
    for n, p in params.items():
        out[n] = flat[offset : offset + p.numel()].view(p.shape)
        out[n].copy_(p.detach())
        offset += p.numel()
    return out


def train_batched(
    slot: AdapterSlot, jobs: list[BatchJob], spec: LocalTrainSpec, *, pad_id: int, shape: ModelShape | None = None,
    grouped: bool | None = None,
) -> list[Update | TrainingDiverged]:
    """Train ``jobs`` together on ``slot``'s base model; one result per job, in order.

    A result is the :class:`Update` :func:`~fedintel.training.client.train_local` would return for that client,
    or the :class:`TrainingDiverged` it would have raised (the other clients go on). The slot's own adapter
    tensors are not touched. ``grouped`` applies every client's LoRA factors in one batched matmul per layer
    (default: on accelerators, where it saves kernel launches); otherwise each client's rows get their own pair
    of matmuls, the very kernels of the sequential loop (on the CPU the cost is the same). Raises ``ValueError`` if the model cannot be batched (:func:`batching_problem`).
    """
    modules, problem = lora_modules(slot)
    if problem:
        raise ValueError(f"cannot batch clients: {problem}")
    if any(len(j.data) == 0 for j in jobs):
        raise ValueError("cannot batch clients without training examples")
    model, rt = slot.model, slot.runtime
    clients = [_new_client(j, slot, spec) for j in jobs]
    lora = _BatchedLora(modules, rt.device.type != "cpu" if grouped is None else grouped)
    model.train()
    try:
        with lora.installed():
            for t in range(max(c.steps for c in clients)):
                active = [c for c in clients if c.failed is None and t < c.steps]
                for c in active:
                    c.step_loss = 0.0
                for m in range(max((len(c.micros[t]) for c in active), default=0)):
                    part = [c for c in active if c.failed is None and m < len(c.micros[t])]
                    if part:
                        _micro_step(lora, slot, part, t, m, pad_id)
                for c in active:
                    if c.failed is None:
                        _optimizer_step(c, spec)
    finally:
        lora.layout = None
        model.eval()
    if rt.device.type == "cpu":  # the global RNG as the sequential loop leaves it (seeded by its last client)
        torch.default_generator.set_state(clients[-1].generator.get_state())
    return [c.failed or _update(c, shape) for c in clients]


def _new_client(job: BatchJob, slot: AdapterSlot, spec: LocalTrainSpec) -> _Client:
    device = slot.runtime.device
    params = {k: torch.nn.Parameter(job.start[k].detach().to(device=device, dtype=p.dtype).clone())
              for k, p in slot.params.items()}  # the slot's dtype: float32 master weights
    steps = spec.num_steps(len(job.data))
    order = batch_order(len(job.data), spec.batch_size, steps, job.seed)
    micros = [[idx[m : m + spec.micro_batch_size] for m in range(0, len(idx), spec.micro_batch_size)] for idx in order]
    return _Client(
        job=job, params=params, scaler=slot.runtime.grad_scaler(), steps=steps, micros=micros, step_sizes=[len(idx) for idx in order],
        optimizer=torch.optim.AdamW(list(params.values()), lr=spec.lr, weight_decay=spec.weight_decay),
        generator=torch.Generator(device=device).manual_seed(job.seed),
    )


def _micro_step(lora: _BatchedLora, slot: AdapterSlot, part: list[_Client], t: int, m: int, pad_id: int) -> None:
    """One combined forward and backward over micro-batch ``m`` of step ``t`` of every client in ``part``."""
    rt = slot.runtime
    batches = [collate(c.job.data, c.micros[t][m], pad_id, "causal_lm") for c in part]
    widths = [b["input_ids"].shape[1] for b in batches]
    rows = [b["input_ids"].shape[0] for b in batches]
    width = max(widths)
    batch = rt.to_device({
        "input_ids": torch.cat([_pad_to(b["input_ids"], width, pad_id) for b in batches]),
        "attention_mask": torch.cat([_pad_to(b["attention_mask"], width, 0) for b in batches]),
        "labels": torch.cat([_pad_to(b["labels"], width, IGNORE) for b in batches]),
    })
    index = None
    if lora.grouped and len(set(rows)) > 1:
        index = torch.repeat_interleave(torch.arange(len(part)), torch.tensor(rows)).to(rt.device)
    lora.layout = _Layout(part, rows, widths, index, lora.grouped)
    with rt.autocast():
        logits = slot.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = _client_losses(logits, batch["labels"], rows)
    values = losses.detach().tolist()
    terms = []
    for i, (c, b, value) in enumerate(zip(part, batches, values, strict=True)):
        if not math.isfinite(value):
            c.failed = TrainingDiverged(f"client {c.job.client_id}: training loss is {value}")
            continue
        n, size = rows[i], c.step_sizes[t]
        terms.append(c.scaler.scale(losses[i] * (n / size)))
        c.step_loss += value * n / size
        c.tokens += int(b["attention_mask"].sum())
        c.max_len = max(c.max_len, widths[i])
    if terms:
        torch.stack(terms).sum().backward()


def _optimizer_step(c: _Client, spec: LocalTrainSpec) -> None:
    """Client ``c``'s optimizer step: exactly the sequential loop's, on its own tensors."""
    params = list(c.params.values())
    c.scaler.unscale_(c.optimizer)
    if c.job.local_term is not None:
        with torch.no_grad():
            c.job.local_term.before_step(c.params)  # type: ignore[arg-type]
    if spec.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
    c.scaler.step(c.optimizer)
    c.scaler.update()
    if c.job.local_term is not None:
        with torch.no_grad():
            c.job.local_term.after_step(c.params)  # type: ignore[arg-type]
    c.optimizer.zero_grad(set_to_none=True)
    c.losses.append(c.step_loss)


def _update(c: _Client, shape: ModelShape | None) -> Update:
    delta = _flat_copy(c.params)
    for k in delta:
        delta[k].sub_(c.job.start[k])
    return Update(
        client_id=c.job.client_id, delta=delta, num_samples=len(c.job.data), base_version=c.job.base_version,
        train_loss=float(np.mean(c.losses)), steps=c.steps, tokens=c.tokens,
        flops=train_flops(shape, c.tokens, c.max_len) if shape is not None else 0.0,
    )
