"""Tokenise examples once, and pad them into micro-batches on the fly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenizedSet:
    """Token ids per example (truncated, unpadded) and, for classification, labels."""

    input_ids: list[list[int]]
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def num_tokens(self, indices: list[int] | None = None) -> int:
        idx = range(len(self)) if indices is None else indices
        return sum(len(self.input_ids[i]) for i in idx)


def tokenize(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int, labels: list[int] | None = None
) -> TokenizedSet:
    """Tokenise ``texts`` with truncation to ``max_length`` tokens (an EOS is appended for causal LMs)."""
    if not texts:
        return TokenizedSet([], [] if labels is not None else None)
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    ids = [list(x) for x in enc["input_ids"]]
    if labels is None and tokenizer.eos_token_id is not None:
        ids = [x if len(x) >= max_length or (x and x[-1] == tokenizer.eos_token_id) else x + [tokenizer.eos_token_id] for x in ids]
    return TokenizedSet(ids, labels)


def collate(data: TokenizedSet, indices: list[int], pad_id: int, task: str) -> dict[str, torch.Tensor]:
    """Right-pad the examples at ``indices`` into a batch; padded positions are ignored by the loss."""
    seqs = [data.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[row, : len(s)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if task == "causal_lm":
        labels = input_ids.clone()
        labels[attention == 0] = -100
        batch["labels"] = labels
    else:
        assert data.labels is not None, "classification data must carry labels"
        batch["labels"] = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    return batch
