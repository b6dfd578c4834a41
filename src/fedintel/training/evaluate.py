"""Evaluation of the current adapter: token-weighted loss and perplexity, or loss and accuracy; IFCA's score."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fedintel.data.tokenize import TokenizedSet, collate
from fedintel.runtime import CPU, Runtime


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
        shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
        # Flattened rows, not logits.transpose(1, 2): cross-entropy over a strided class dimension is ~2x slower.
        tok = F.cross_entropy(shift_logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100, reduction="none")
        return tok.view(shift_labels.shape).sum(dim=1), (shift_labels != -100).sum(dim=1), None
    losses = F.cross_entropy(logits, labels, reduction="none")
    return losses, torch.ones_like(labels), logits.argmax(-1) == labels


@torch.inference_mode()
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
    n = len(data) if max_samples is None else min(len(data), max_samples)
    if n == 0:
        return {}
    model.eval()
    total_loss, total_count, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        with runtime.autocast():
            sums, counts, hits = example_loss_sums(model, runtime.to_device(collate(data, idx, pad_id, task)), task)
        total_loss += float(sums.sum())
        total_count += int(counts.sum())
        if hits is not None:
            correct += int(hits.sum())
    loss = total_loss / max(total_count, 1)
    if task == "causal_lm":
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return {"loss": loss, "accuracy": correct / total_count}


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
