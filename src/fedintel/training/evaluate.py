"""Evaluation of the current adapter: token-weighted loss and perplexity, or loss and accuracy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fedintel.data.tokenize import TokenizedSet, collate


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data: TokenizedSet,
    *,
    task: str,
    pad_id: int,
    batch_size: int = 16,
    max_samples: int | None = None,
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
        batch = collate(data, idx, pad_id, task)
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        if task == "causal_lm":
            # PEFT prompt/prefix methods may prepend virtual tokens to the logits: keep the last positions.
            logits = logits[:, -labels.shape[1] :, :]
            shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
            total_loss += F.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum",
            ).item()
            total_count += int((shift_labels != -100).sum())
        else:
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            total_count += len(idx)
    loss = total_loss / max(total_count, 1)
    if task == "causal_lm":
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return {"loss": loss, "accuracy": correct / total_count}
