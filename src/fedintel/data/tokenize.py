"""Tokenise examples once, and pad them into micro-batches on the fly.

Instruction data (prompt/response pairs) is formatted with the tokenizer's chat template and trained with the
loss on the response tokens only, as supervised fine-tuning trainers do (TRL's completion-only loss).
Truncation cuts the end of the sequence (the response's tail). Where the prompt is so long that less than a
quarter of ``max_length`` would be left for the response, the prompt's beginning is cut instead, so every
example keeps response tokens to learn from (and no batch is ever all prompt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class TokenizedSet:
    """Token ids per example (truncated, unpadded) and, for classification, labels."""

    input_ids: list[list[int]]
    labels: list[int] | None = None
    loss_start: list[int] | None = None
    """Instruction data: per example, the position of the first response token (earlier ones carry no loss)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def num_tokens(self, indices: list[int] | None = None) -> int:
        idx = range(len(self)) if indices is None else indices
        return sum(len(self.input_ids[i]) for i in idx)


def tokenize(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int, labels: list[int] | None = None,
    pairs: list[str | None] | None = None,
) -> TokenizedSet:
    """Tokenise ``texts`` with truncation to ``max_length`` tokens (an EOS is appended for causal LMs).

    ``pairs`` (sentence-pair tasks): a second text per example, joined by the tokenizer with its own separator
    and truncated longest-first; ``None`` entries are single sentences.
    """
    if not texts:
        return TokenizedSet([], [] if labels is not None else None)
    if pairs is not None and any(p is not None for p in pairs):
        ids = [[] for _ in texts]
        paired = [i for i, p in enumerate(pairs) if p is not None]
        single = [i for i, p in enumerate(pairs) if p is None]
        if paired:
            enc = tokenizer([texts[i] for i in paired], [str(pairs[i]) for i in paired], truncation="longest_first",
                            max_length=max_length, add_special_tokens=True)
            for i, x in zip(paired, enc["input_ids"], strict=True):
                ids[i] = list(x)
        if single:
            enc = tokenizer([texts[i] for i in single], truncation=True, max_length=max_length, add_special_tokens=True)
            for i, x in zip(single, enc["input_ids"], strict=True):
                ids[i] = list(x)
        return TokenizedSet(ids, labels)
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    ids = [list(x) for x in enc["input_ids"]]
    if labels is None and tokenizer.eos_token_id is not None:
        ids = [x if len(x) >= max_length or (x and x[-1] == tokenizer.eos_token_id) else x + [tokenizer.eos_token_id] for x in ids]
    return TokenizedSet(ids, labels)


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """The text before the response: the chat template's user turn and assistant header, or a plain layout
    for tokenizers without a template."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    head = f"{system}\n\n" if system else ""
    return f"{head}### Instruction:\n{prompt}\n\n### Response:\n"


def tokenize_instructions(
    prompts: list[str], responses: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
    systems: list[str | None] | None = None,
) -> TokenizedSet:
    """Prompt/response pairs as token ids with the loss on the response only (see the module docstring).

    Prompt and response are tokenised separately and joined, so the boundary between them is exact in tokens.
    The response ends with the tokenizer's end-of-turn/EOS token so the model learns to stop.
    """
    ids_out: list[list[int]] = []
    starts: list[int] = []
    cut_prompts = 0
    eos = tokenizer.eos_token_id
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        system = systems[i] if systems else None
        prompt_ids = list(tokenizer(format_prompt(tokenizer, prompt, system), add_special_tokens=False)["input_ids"])
        if not getattr(tokenizer, "chat_template", None) and tokenizer.bos_token_id is not None:
            prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
        response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
        if eos is not None:
            response_ids.append(eos)
        keep_prompt = max_length - min(len(response_ids), max(1, max_length // 4))
        if len(prompt_ids) > keep_prompt:
            prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
            cut_prompts += 1
        ids_out.append((prompt_ids + response_ids)[:max_length])
        starts.append(len(prompt_ids))
    if cut_prompts:
        log.info("instruction data: %d of %d prompts cut at the start to leave room for the response "
                 "(max_length=%d)", cut_prompts, len(prompts), max_length)
    return TokenizedSet(ids_out, None, starts)


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
        if data.loss_start is not None:  # instruction data: no loss on the prompt
            for row, i in enumerate(indices):
                labels[row, : data.loss_start[i]] = -100
        batch["labels"] = labels
    else:
        assert data.labels is not None, "classification data must carry labels"
        batch["labels"] = torch.tensor([data.labels[i] for i in indices], dtype=torch.long)
    return batch
