"""Evaluation of the current adapter: token-weighted loss and perplexity, or loss and accuracy; IFCA's score."""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F

from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.runtime import CPU, Runtime

K = TypeVar("K")


def example_loss_sums(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per example of ``batch``: summed loss (nats), predicted-token count, and predicted label.

    Causal LM: next-token cross-entropy over the example's real tokens, and their number (no label).
    Classification: the label's cross-entropy, a count of 1, and the argmax label.
    """
    batch = dict(batch)
    labels = batch.pop("labels")
    logits = model(**batch).logits.float()
    if task == "causal_lm":
        # PEFT prompt/prefix methods may prepend virtual tokens to the logits: keep the last positions.
        logits = logits[:, -labels.shape[1] :, :]
        # Shift the labels, not the logits: position t predicts label t+1, and the last position predicts
        # nothing (-100). Slicing the logits would copy them (the largest tensor here) to flatten them, and
        # cross-entropy over flattened rows is ~2x faster than over logits.transpose(1, 2).
        target = F.pad(labels[:, 1:], (0, 1), value=-100)
        tok = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="none")
        return tok.view(target.shape).sum(dim=1), (target != -100).sum(dim=1), None
    losses = F.cross_entropy(logits, labels, reduction="none")
    return losses, torch.ones_like(labels), logits.argmax(-1) == labels


def evaluate(
    model: torch.nn.Module,
    data: TokenizedSet,
    *,
    task: str,
    pad_id: int,
    batch_size: int = 16,
    max_samples: int | None = None,
    runtime: Runtime = CPU,
) -> dict[str, float]:
    """Metrics of ``model`` on (the first ``max_samples`` of) ``data``.

    Causal LM: ``loss`` is the mean next-token cross-entropy over all predicted tokens (nats) and
    ``perplexity = exp(loss)``. Classification: mean cross-entropy and ``accuracy``.
    """
    return evaluate_sets(model, {0: data}, task=task, pad_id=pad_id, batch_size=batch_size,
                         max_samples=max_samples, runtime=runtime).get(0, {})


@torch.inference_mode()
def evaluate_sets(
    model: torch.nn.Module,
    sets: dict[K, TokenizedSet],
    *,
    task: str,
    pad_id: int,
    batch_size: int = 16,
    max_samples: int | None = None,
    runtime: Runtime = CPU,
) -> dict[K, dict[str, float]]:
    """:func:`evaluate` of each set (its first ``max_samples``) in shared batches: many small sets (one per
    domain) cost a few full batches instead of a forward pass each. Empty sets get no entry."""
    caps = {k: len(d) if max_samples is None else min(len(d), max_samples) for k, d in sets.items()}
    keys = [k for k in sets if caps[k] > 0]
    if not keys:
        return {}
    parts = [sets[k] for k in keys]
    joined = TokenizedSet(
        [ids for k, d in zip(keys, parts, strict=True) for ids in d.input_ids[: caps[k]]],
        None if parts[0].labels is None else [y for k, d in zip(keys, parts, strict=True) for y in d.labels[: caps[k]]],
        None if parts[0].loss_start is None
        else [s for k, d in zip(keys, parts, strict=True) for s in d.loss_start[: caps[k]]],
    )
    owner = [j for j, k in enumerate(keys) for _ in range(caps[k])]
    loss, count, correct = [0.0] * len(keys), [0] * len(keys), [0] * len(keys)
    model.eval()
    for start in range(0, len(joined), batch_size):
        idx = list(range(start, min(len(joined), start + batch_size)))
        with runtime.autocast():
            sums, counts, hits = example_loss_sums(model, runtime.to_device(collate(joined, idx, pad_id, task)), task)
        rows = torch.tensor([owner[i] for i in idx])
        for j in rows.unique().tolist():
            mine = rows == j  # summed as one tensor, as a lone set always was
            loss[j] += float(sums[mine].sum())
            count[j] += int(counts[mine].sum())
            if hits is not None:
                correct[j] += int(hits[mine].sum())
    out: dict[K, dict[str, float]] = {}
    for j, k in enumerate(keys):
        mean = loss[j] / max(count[j], 1)
        out[k] = ({"loss": mean, "perplexity": math.exp(min(mean, 50.0))} if task == "causal_lm"
                  else {"loss": mean, "accuracy": correct[j] / count[j]})
    return out


@torch.inference_mode()
def pick_loss(
    model: torch.nn.Module, data: TokenizedSet, *, task: str, pad_id: int, micro_batch_size: int, batches: int,
    runtime: Runtime = CPU,
) -> float:
    """IFCA's cluster score (Ghosh et al., 2020): the model's own mean loss (nats), summed over the first
    ``batches`` micro-batches of ``data``; 0.0 for empty ``data``."""
    idx = list(range(min(len(data), micro_batch_size * batches)))
    model.eval()
    total = 0.0
    for s in range(0, len(idx), micro_batch_size):
        batch = runtime.to_device(collate(data, idx[s : s + micro_batch_size], pad_id, task))
        with runtime.autocast():
            total += float(model(**batch).loss)
    return total
