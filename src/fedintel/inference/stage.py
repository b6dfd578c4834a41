"""A contiguous slice of a decoder-only transformer, run with its own KV cache.

``StageModel(model, start, end)`` keeps layers ``[start, end)`` of a Hugging Face causal LM (Llama,
Mistral, Qwen2 and others whose base model has ``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``):
the token embedding on the first stage, the final norm and LM head on the last. Running the stages one
after another over the same tokens computes exactly what the whole model computes.

This module also defines :class:`IncrementalLM`, the interface every way of running a causal LM token by
token offers (in-process, one remote device, a split pipeline), and :func:`greedy_generate` over it.
"""

from __future__ import annotations

import copy
import inspect
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask


class StageError(RuntimeError):
    """A stage cannot run the request (bad slice, out-of-sync cache, context exceeded, ...)."""


def decoder_parts(model: torch.nn.Module) -> torch.nn.Module:
    """The base decoder (``model.model``) of a causal LM, checked for the parts a split needs."""
    base = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or any(not hasattr(base, n) for n in needed) or not hasattr(model, "lm_head"):
        raise StageError(
            f"{type(model).__name__} is not a decoder-only model with embed_tokens/layers/norm/rotary_emb/"
            "lm_head; split inference supports Llama-style models"
        )
    return base


def num_layers_of(model: torch.nn.Module) -> int:
    """Number of transformer layers of a causal LM."""
    return len(decoder_parts(model).layers)


def _shallow(module: torch.nn.Module) -> torch.nn.Module:
    twin = copy.copy(module)
    twin._modules = dict(module._modules)  # so replacing a child does not touch the original
    return twin


def _renumbered(layer: torch.nn.Module, index: int) -> torch.nn.Module:
    """A copy of ``layer`` (sharing weights) whose attention writes to cache slot ``index``.

    The stage's cache holds only its own layers, so they are numbered locally from 0.
    """
    twin = _shallow(layer)
    attn = _shallow(layer.self_attn)
    attn.layer_idx = index
    twin._modules["self_attn"] = attn
    if hasattr(twin, "layer_idx"):
        twin.layer_idx = index
    return twin


def _cache_kwarg(layer: torch.nn.Module) -> str:
    params = inspect.signature(layer.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class StageModel(torch.nn.Module):
    """Layers ``[start, end)`` of ``model``; the embedding if ``start == 0``, norm + head if last."""

    def __init__(self, model: torch.nn.Module, start: int, end: int) -> None:
        super().__init__()
        base = decoder_parts(model)
        total = len(base.layers)
        if not 0 <= start < end <= total:
            raise StageError(f"layers {start}:{end} is not a non-empty slice of the model's {total} layers")
        self.start, self.end, self.total = start, end, total
        self.first = start == 0
        self.last = end == total
        self.embed = base.embed_tokens if self.first else None
        self.layers = torch.nn.ModuleList(_renumbered(layer, i) for i, layer in enumerate(base.layers[start:end]))
        self.rotary = base.rotary_emb
        self.norm = base.norm if self.last else None
        self.lm_head = model.lm_head if self.last else None
        cfg = copy.deepcopy(model.config)
        cfg.num_hidden_layers = end - start
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = list(cfg.layer_types)[start:end]
        self.config = cfg
        self.hidden_size = int(cfg.hidden_size)
        self.vocab_size = int(cfg.vocab_size)
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        self._cache_kw = _cache_kwarg(self.layers[0])
        self.eval()

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this stage's layers."""
        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache: DynamicCache, n_logits: int = 1) -> torch.Tensor:  # type: ignore[override]
        """Run the stage on new tokens.

        ``x`` is ``input_ids`` ``(1, n)`` on the first stage, else hidden states ``(1, n, hidden)``.
        Returns hidden states ``(1, n, hidden)``, or on the last stage the logits ``(1, n_logits, vocab)``
        of the last ``n_logits`` positions (0: all).
        """
        x = x.to(self.device)
        if self.first:
            if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
                raise StageError(f"the first stage expects input_ids (1, n) int64, got {tuple(x.shape)} {x.dtype}")
            hidden = self.embed(x.long())
        else:
            if x.dim() != 3 or x.shape[-1] != self.hidden_size or not x.is_floating_point():
                raise StageError(
                    f"stage {self.start}:{self.end} expects hidden states (1, n, {self.hidden_size}), "
                    f"got {tuple(x.shape)} {x.dtype}"
                )
            hidden = x.to(self.lm_dtype)
        past = cache.get_seq_length()
        n = hidden.shape[1]
        if past + n > self.max_context:
            raise StageError(f"{past + n} tokens exceed the model's context of {self.max_context} tokens")
        position_ids = torch.arange(past, past + n, device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(self.config, hidden, None, cache, position_ids)
        pos_emb = self.rotary(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_ids=position_ids, use_cache=True,
                position_embeddings=pos_emb, **{self._cache_kw: cache},
            )
        if not self.last:
            return hidden.cpu()  # the wire (and the next stage) take CPU tensors; a no-op on the CPU
        if n_logits:
            hidden = hidden[:, -n_logits:]
        return self.lm_head(self.norm(hidden)).float().cpu()

    @property
    def device(self) -> torch.device:
        """Where the stage's weights live."""
        return next(self.layers.parameters()).device

    @property
    def lm_dtype(self) -> torch.dtype:
        """The dtype of the stage's weights."""
        return next(self.layers.parameters()).dtype


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of ``cache``."""
    cur = cache.get_seq_length()
    if length > cur or length < 0:
        raise StageError(f"cannot truncate a cache of {cur} tokens to {length}")
    if length < cur:
        cache.crop(length - cur)


# ----------------------------------------------------------------------------- incremental LMs
@dataclass
class StepOutput:
    """What one incremental forward returns: greedy tokens and (optionally) logits, per position."""

    argmax: torch.Tensor
    logits: torch.Tensor | None = None
    seconds: float = 0.0


class IncrementalLM(Protocol):
    """A causal LM run token by token with a server-side KV cache per session."""

    max_context: int

    def open_session(self) -> str:
        """Start a session (an empty KV cache) and return its id."""
        ...

    def step(self, session: str, ids: torch.Tensor, pos: int, n_logits: int = 1,
             want_logits: bool = False) -> StepOutput:
        """Feed ``ids`` (1, n) starting at position ``pos``; greedy tokens of the last ``n_logits`` positions."""
        ...

    def truncate(self, session: str, length: int) -> None:
        """Drop cached positions ``>= length``."""
        ...

    def close_session(self, session: str) -> None:
        """Free the session's cache."""
        ...


class LocalLM:
    """A whole Hugging Face causal LM in this process (the single-process reference)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.sessions: dict[str, DynamicCache] = {}

    def open_session(self) -> str:
        sid = uuid.uuid4().hex
        self.sessions[sid] = DynamicCache(config=self.model.config)
        return sid

    @torch.inference_mode()
    def step(self, session: str, ids: torch.Tensor, pos: int, n_logits: int = 1,
             want_logits: bool = False) -> StepOutput:
        cache = self.sessions[session]
        if cache.get_seq_length() != pos:
            raise StageError(f"session out of sync: {cache.get_seq_length()} cached tokens, request at {pos}")
        if pos + ids.shape[1] > self.max_context:
            raise StageError(f"{pos + ids.shape[1]} tokens exceed the model's context of {self.max_context}")
        t0 = time.perf_counter()
        out = self.model(input_ids=ids.to(self.model.device), use_cache=True, logits_to_keep=n_logits,
                         **{self._cache_kw: cache})
        logits = (out.logits[0, -n_logits:] if n_logits else out.logits[0]).float().cpu()
        return StepOutput(logits.argmax(-1), logits if want_logits else None, time.perf_counter() - t0)

    def truncate(self, session: str, length: int) -> None:
        crop_cache(self.sessions[session], length)

    def close_session(self, session: str) -> None:
        self.sessions.pop(session, None)


@dataclass
class GenerationResult:
    """Generated tokens with timings (seconds) and, if asked, the logits behind each token."""

    tokens: list[int]
    prefill_s: float
    decode_s: list[float] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Wall time of the whole generation."""
        return self.prefill_s + sum(self.decode_s)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput (tokens after the first, per second of decoding)."""
        d = sum(self.decode_s)
        return len(self.decode_s) / d if d > 0 else float("nan")


def check_context(lm: IncrementalLM, prompt_len: int, max_new_tokens: int) -> None:
    """Raise a clear error when the prompt plus the answer cannot fit the model's context."""
    if prompt_len == 0:
        raise ValueError("the prompt is empty")
    if prompt_len + max_new_tokens > lm.max_context:
        raise ValueError(
            f"the prompt has {prompt_len} tokens; with max_new_tokens={max_new_tokens} that exceeds the model's "
            f"context of {lm.max_context} tokens: shorten the prompt or lower max_new_tokens"
        )


def greedy_generate(
    lm: IncrementalLM, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None,
    keep_logits: bool = False,
) -> GenerationResult:
    """Greedy decoding with a KV cache: one prefill step over the prompt, then one token per step."""
    check_context(lm, len(prompt_ids), max_new_tokens)
    sid = lm.open_session()
    try:
        t0 = time.perf_counter()
        out = lm.step(sid, torch.tensor([prompt_ids]), 0, 1, keep_logits)
        res = GenerationResult([int(out.argmax[-1])], time.perf_counter() - t0)
        if keep_logits and out.logits is not None:
            res.logits.append(out.logits[-1])
        pos = len(prompt_ids)
        while len(res.tokens) < max_new_tokens and res.tokens[-1] != eos_token_id:
            t0 = time.perf_counter()
            out = lm.step(sid, torch.tensor([[res.tokens[-1]]]), pos, 1, keep_logits)
            res.decode_s.append(time.perf_counter() - t0)
            res.tokens.append(int(out.argmax[-1]))
            if keep_logits and out.logits is not None:
                res.logits.append(out.logits[-1])
            pos += 1
        return res
    finally:
        lm.close_session(sid)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with int8 dynamically quantised linear layers: a cheap draft / end-device model.

    Uses PyTorch's eager dynamic quantisation (deprecated upstream in favour of torchao, still shipped);
    raises a clear error where it is not available.
    """
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as err:  # pragma: no cover - depends on the torch build
        raise StageError(f"int8 dynamic quantisation is not available in this torch build: {err}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8).eval()
