"""Initialise a prefix from the activations of real words, as Li and Liang (ACL 2021, section 7.2) do.

PEFT draws the prefix at random, so a prefix-tuned model starts far from its base (perplexity ~1e5 on SmolLM2).
Li & Liang instead start from the keys and values the frozen base model computes for real tokens: the model
with that prefix behaves, at step 0, exactly like the base reading those tokens first. Here the text's tokens
(without special tokens) go through the base once; their per-layer keys and values become the prefix.

With the MLP reparameterisation (``prefix_projection``) the trainable values are the MLP's, not the prefix: the
MLP's output layer is then solved (least squares over the virtual tokens, minimum norm) so that it outputs
exactly those keys and values; that needs a hidden size at least the number of virtual tokens.

Limits: causal language models only (an encoder's tokens attend to the input that follows, so no fixed prefix
reproduces them); models whose cache is not one key and one value per layer (e.g. sliding-window hybrids) are
refused.
"""

from __future__ import annotations

import math

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedintel.errors import ConfigError


def text_prefix(base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str,
                num_virtual_tokens: int) -> torch.Tensor:
    """``[num_virtual_tokens, num_layers * 2 * kv_width]``: the base model's keys and values of ``text``'s tokens,
    laid out as PEFT's prefix embedding (per layer: key heads, then value heads). A text shorter than the prefix
    is repeated; a longer one is refused (nothing is silently cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("peft.prefix_init_text: the text has no tokens")
    if len(ids) > num_virtual_tokens:
        raise ConfigError(f"peft.prefix_init_text: {len(ids)} tokens do not fit peft.num_virtual_tokens="
                          f"{num_virtual_tokens}; shorten the text or raise num_virtual_tokens")
    ids = (ids * math.ceil(num_virtual_tokens / len(ids)))[:num_virtual_tokens]
    device = next(base.parameters()).device
    with torch.no_grad():
        out = base(input_ids=torch.tensor([ids], device=device), use_cache=True)
    cache = out.get("cache", out.get("past_key_values"))  # renamed "cache" in transformers 5
    layers = getattr(cache, "layers", None)
    if layers is None or any(not hasattr(layer, "keys") or layer.keys is None for layer in layers):
        raise ConfigError(f"peft.prefix_init_text: {type(base).__name__} returns no per-layer key/value cache")
    rows = []
    for layer in layers:  # keys/values: [1, kv_heads, tokens, head_dim] -> [tokens, kv_heads * head_dim]
        for t in (layer.keys, layer.values):
            rows.append(t[0].permute(1, 0, 2).reshape(num_virtual_tokens, -1))
    return torch.cat(rows, dim=-1).float().cpu()


def set_prefix(model: PeftModel, prefix: torch.Tensor) -> None:
    """Make ``model``'s (prefix-tuning) encoder output ``prefix`` for its virtual tokens."""
    encoder = model.prompt_encoder[model.active_adapter]
    with torch.no_grad():
        if not encoder.prefix_projection:
            encoder.embedding.weight.copy_(prefix.to(encoder.embedding.weight))
            return
        first, last = encoder.transform[0], encoder.transform[-1]
        hidden = torch.tanh(first(encoder.embedding.weight)).double()  # [tokens, H]
        if hidden.shape[1] < hidden.shape[0]:
            raise ConfigError(f"peft.prefix_init_text with peft.prefix_projection: the MLP's hidden size "
                              f"({hidden.shape[1]}) must be at least peft.num_virtual_tokens ({hidden.shape[0]}) "
                              "to reproduce the text's activations; raise peft.prefix_projection_hidden")
        design = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=hidden.dtype, device=hidden.device)], dim=1)
        # minimum-norm exact solution of design @ [W^T; b] = prefix (underdetermined: tokens <= H + 1)
        solution = torch.linalg.pinv(design) @ prefix.double().to(design.device)
        last.weight.copy_(solution[:-1].T.to(last.weight))
        last.bias.copy_(solution[-1].to(last.bias))
