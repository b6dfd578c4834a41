"""A serving device: the inference worker plus batched decoding with a KV cache per sequence.

``python -m fedintel.serving.device`` takes every option of :mod:`fedintel.inference.worker` plus
``--device``/``--dtype`` (``runtime.device``/``runtime.dtype``: where the stage's weights live and in which
precision) and adds four operations that :mod:`fedintel.serving.scheduler` drives:

``serve_prefill``  ``{"session"}`` + ``input_ids`` (1, n) or ``hidden`` (1, n, h): a new sequence, alone
                   (batch of one, exactly what a request gets when served alone); down the chain
``serve_prefill_many`` ``{"sessions", "prompts"}``: several new sequences in one ragged forward (requests
                   that arrived together), each ending as ``serve_prefill`` leaves it; ``argmax`` (B,)
``serve_decode``   ``{"rows": [session, ...]}`` + ``input_ids`` (B, 1) or ``hidden`` (B, 1, h): one token of
                   every row in one batched forward; the last stage answers ``argmax`` (B,); ``"end"``:
                   sessions to free first (they finished since the last step)
``serve_end``      ``{"sessions": [...]}``: free them (a request finished, failed or its client left)
``serve_reset``    drop every serving session (the front restarted its scheduler)

Batching (continuous batching, as vLLM and TGI do it, without paged memory): each sequence owns a KV
cache. While the set of rows stays the same, the stage keeps them stacked as one left-padded cache and
appends one position per step; when rows join or leave, the rows that stay are selected in place, newcomers
are padded and appended, and padding columns no row needs are cut off (a few tensor operations per layer
per change of membership, not a copy per row, and nothing per step).
Each row gets its true positions (RoPE) and a padding mask, so a row's tokens are what it computes alone
up to floating-point summation order (batched matrix products may round differently in the last bit;
greedy tokens agree unless two logits are that close).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import OrderedDict
from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from fedintel.inference.protocol import Message
from fedintel.inference.worker import Worker, WorkerError, count_arg
from fedintel.inference.worker import build_parser as worker_parser
from fedintel.inference.worker import main as worker_main
from fedintel.serving.kvcache import cache_from_pieces, growable_cache

# The words a stage's refusal starts with when it no longer holds a prompt prefix the first stage offered. The
# refusal reaches the first stage as the text of an error reply (across processes), so the text is the protocol.
PREFIX_LOST = "prefix not held"


def _prefix_lost(err: WorkerError) -> bool:
    return PREFIX_LOST in str(err)


def _prompt_key(ids: tuple[int, ...]) -> str:
    """The name every stage stores a prompt's KV under (a hash of its token ids)."""
    return hashlib.blake2b(torch.tensor(ids, dtype=torch.int64).numpy().tobytes(), digest_size=12).hexdigest()


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(config: Any, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = growable_cache(config)
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


def _seq_len(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def _left(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` (B, heads, seq, dim) with ``n`` zero columns added on the left of seq (``n`` < 0: cut off)."""
    if n > 0:
        return torch.nn.functional.pad(t, (0, 0, n, 0))
    return t[:, :, -n:] if n < 0 else t


def _ragged_mask(past_real: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """Attention mask (B, 1, n, P + n) of a block of ``n`` new positions after ``P`` past columns, where row
    ``i``'s real past columns are ``past_real[i]`` and its real new tokens the last ``m[i]`` of the block.
    A real query sees its row's real past and its real new tokens up to itself; a padding query sees only
    itself (so no row of the softmax is empty and padding stays finite; no real query ever sees it)."""
    b, p = past_real.shape
    j = torch.arange(n)
    new_real = j.unsqueeze(0) >= (n - m).unsqueeze(1)  # (B, n)
    causal = j.unsqueeze(0) <= j.unsqueeze(1)  # (q, k)
    see_new = causal.unsqueeze(0) & new_real.unsqueeze(1)  # (B, q, k)
    see_new = see_new | torch.eye(n, dtype=torch.bool).unsqueeze(0)
    see_past = past_real.unsqueeze(1).expand(b, n, p) & new_real.unsqueeze(2)  # only real queries see the past
    return torch.cat([see_past, see_new], dim=2).unsqueeze(1)


class ServingWorker(Worker):
    """:class:`~fedintel.inference.worker.Worker` with the batched serving operations."""

    def __init__(self, args: argparse.Namespace, security: Any) -> None:
        from fedintel.config import RuntimeConfig
        from fedintel.runtime import resolve_runtime

        self.runtime = resolve_runtime(RuntimeConfig(device=args.device, dtype=args.dtype), apply_threads=False)
        super().__init__(args, security)
        if self.role != "lm":
            raise WorkerError("a serving device serves a language model (--role lm)")
        # session -> its own cache (batch of one), or None while its row lives in the stacked batch cache
        self.serve: dict[str, DynamicCache | None] = {}
        self.batch_rows: tuple[str, ...] = ()
        self.batch_cache: DynamicCache | None = None
        self.batch_lens = torch.zeros(0, dtype=torch.long)
        self.rebuilds = 0
        # prompt key -> (its ids on the first stage, else None; its KV): the newest prompts, for prefix reuse
        self.prefixes: OrderedDict[str, tuple[tuple[int, ...] | None, list[tuple[torch.Tensor, torch.Tensor]]]] = (
            OrderedDict())
        self.prefix_hits = 0
        self.prefix_tokens_saved = 0

    def handle(self, msg: Message) -> Message:
        # every serving operation computes (on the thread that packed the weights); ping and shutdown answer
        # at once, even while a forward runs
        if msg.op in ("ping", "shutdown"):
            return super().handle(msg)
        return self.on_compute(super().handle, msg)

    # ------------------------------------------------------------------ the forward pass
    @torch.inference_mode()
    def _run(self, x: torch.Tensor, cache: DynamicCache, positions: torch.Tensor,
             padding: torch.Tensor | None) -> torch.Tensor:
        """Stage forward over ``x`` (B, n) ids or (B, n, h) hidden; ``positions`` (B, n); ``padding`` (B, past+n)
        (1 = real token) or None. Hidden states out, or on the last stage the logits of the last position."""
        st, dev = self.stage, self.runtime.device
        if st.first:
            if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
                raise WorkerError(f"the first stage expects input_ids (B, n), got {tuple(x.shape)} {x.dtype}")
            hidden = st.embed(x.to(dev).long())
        else:
            if x.dim() != 3 or x.shape[-1] != st.hidden_size or not x.is_floating_point():
                raise WorkerError(f"stage {st.start}:{st.end} expects hidden (B, n, {st.hidden_size}), "
                                  f"got {tuple(x.shape)} {x.dtype}")
            hidden = x.to(dev, st.lm_dtype)
        if int(positions.max()) + 1 > st.max_context:
            raise WorkerError(f"{int(positions.max()) + 1} tokens exceed the model's context of {st.max_context}")
        positions = positions.to(dev)
        if padding is not None and padding.dim() == 4 and st.config._attn_implementation == "eager":
            # a prepared boolean mask (ragged prefills); eager attention adds a float mask to the scores
            padding = torch.zeros(padding.shape, dtype=st.lm_dtype).masked_fill(~padding, torch.finfo(st.lm_dtype).min)
        with self.runtime.autocast():
            mask = create_causal_mask(st.config, hidden, None if padding is None else padding.to(dev), cache,
                                      positions)
            pos_emb = st.rotary(hidden, position_ids=positions)
            for layer in st.layers:
                hidden = layer(hidden, attention_mask=mask, position_ids=positions, use_cache=True,
                               position_embeddings=pos_emb, **{st._cache_kw: cache})
            if not st.last:
                return hidden.cpu()
            return st.lm_head(st.norm(hidden[:, -1:])).float()[:, -1].cpu()

    def _input(self, msg: Message) -> torch.Tensor:
        x = msg.tensors.get("input_ids" if self.stage.first else "hidden")
        if x is None:
            raise WorkerError(f"stage {self.stage.start}:{self.stage.end} needs tensor "
                              f"{'input_ids' if self.stage.first else 'hidden'}")
        return x

    def _reply(self, op: str, meta: dict[str, Any], out: torch.Tensor, compute_s: float,
               undo: Any) -> Message:
        timing = list(meta.get("timing", [])) + [compute_s]
        if self.stage.last:
            return Message("ok", {"timing": timing}, {"argmax": out.argmax(-1)})
        try:
            return self._forward_next(op, {**meta, "timing": timing}, {"hidden": out})
        except WorkerError:
            with self.lock:  # roll back so every stage agrees on every sequence's length
                undo()
            raise

    # ------------------------------------------------------------------ batch membership
    def _row_cache(self, i: int) -> DynamicCache:
        """Row ``i`` of the stacked cache as a sequence's own cache (its left padding cut off)."""
        assert self.batch_cache is not None
        kv = _kv(self.batch_cache)
        pad = (kv[0][0].shape[-2] if kv else 0) - int(self.batch_lens[i])
        return _cache_from(self.stage.config, [(k[i:i + 1, :, pad:].clone(), v[i:i + 1, :, pad:].clone())
                                               for k, v in kv])

    def _dissolve(self) -> None:
        """Split the stacked cache back into the sequences' own caches."""
        if self.batch_cache is not None:
            for i, sid in enumerate(self.batch_rows):
                if sid in self.serve:
                    self.serve[sid] = self._row_cache(i)
        self.batch_rows, self.batch_cache = (), None
        self.batch_lens = torch.zeros(0, dtype=torch.long)

    def _assemble(self, rows: tuple[str, ...]) -> None:
        """Make ``rows`` the stacked batch (left-padded to the longest row).

        Rows already in the batch stay where they are: one ``index_select`` per layer keeps them (and drops
        the rows that left), newcomers are padded and appended, and padding columns no row needs any more
        are cut off. A membership change costs a few tensor operations per layer, not a copy per row."""
        if rows == self.batch_rows:
            return
        missing = [s for s in rows if s not in self.serve]
        if missing:
            raise WorkerError(f"unknown serving session(s) {missing} (never prefilled, ended or reset)")
        if len(set(rows)) != len(rows):
            raise WorkerError("a session appears twice in one decode batch")
        old = {s: i for i, s in enumerate(self.batch_rows)}
        wanted = set(rows)
        for s, i in old.items():  # a row leaving the batch while its sequence lives on keeps its cache
            if s not in wanted and s in self.serve:
                self.serve[s] = self._row_cache(i)
        kept = [s for s in rows if s in old]
        new = [s for s in rows if s not in old]
        lens = {s: int(self.batch_lens[old[s]]) for s in kept}
        lens.update({s: _seq_len(self.serve[s]) for s in new})  # type: ignore[arg-type]
        width = max(lens.values())
        sources = [_kv(self.serve[s]) for s in new]  # type: ignore[arg-type]
        if kept:  # the rows that stay, selected in place, as one more source ahead of the newcomers
            assert self.batch_cache is not None
            stacked = _kv(self.batch_cache)
            idx = torch.tensor([old[s] for s in kept], device=stacked[0][0].device)
            sources.insert(0, [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in stacked])
        # left-pad each source to the new width (a negative shift cuts columns nobody needs), one cat per layer
        layers = [(torch.cat([_left(kv[j][0], width - kv[j][0].shape[-2]) for kv in sources]),
                   torch.cat([_left(kv[j][1], width - kv[j][1].shape[-2]) for kv in sources]))
                  for j in range(len(sources[0]))]
        order = kept + new
        if order != list(rows):  # the scheduler keeps its rows in order, so this is rare
            perm = torch.tensor([order.index(s) for s in rows])
            layers = [(k.index_select(0, perm.to(k.device)), v.index_select(0, perm.to(v.device))) for k, v in layers]
        self.batch_cache = _cache_from(self.stage.config, layers)
        self.batch_rows = rows
        self.batch_lens = torch.tensor([lens[s] for s in rows], dtype=torch.long)
        for s in rows:
            self.serve[s] = None
        self.rebuilds += 1

    def _crop_batch(self, width: int) -> None:
        """Cut the stacked cache back to ``width`` columns (an undo). ``Cache.crop`` takes the number of
        columns to remove, negative (transformers 5 refuses a positive length)."""
        if self.batch_cache is not None and _seq_len(self.batch_cache) > width:
            self.batch_cache.crop(width - _seq_len(self.batch_cache))

    # ------------------------------------------------------------------ operations
    # ------------------------------------------------------------------ prefix reuse
    def _longest_prefix(self, ids: tuple[int, ...]) -> tuple[str | None, int]:
        """The stored prompt sharing the longest prefix with ``ids`` (first stage), and that length (at most
        ``len(ids) - 1``: the last token is always computed, it gives the next token's logits)."""
        best, best_len = None, 0
        for key, (stored, _) in reversed(self.prefixes.items()):  # newest first: the likeliest held by every stage
            if stored is None:
                continue
            n = 0
            for a, b in zip(stored, ids[:-1], strict=False):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = key, n
        return (best, best_len) if best_len >= self.args.prefix_min else (None, 0)

    def _remember(self, key: str, ids: tuple[int, ...] | None, cache: DynamicCache) -> None:
        if self.args.prefix_cache <= 0:
            return
        # views, no copy: a sequence's cache is only ever appended to after its prompt (the GrowableLayer writes
        # beyond these columns) or restacked into the batch (a new tensor)
        self.prefixes[key] = (ids, _kv(cache))
        self.prefixes.move_to_end(key)
        while len(self.prefixes) > self.args.prefix_cache:
            self.prefixes.popitem(last=False)

    def op_serve_prefill(self, msg: Message) -> Message:
        """A new sequence, alone. The first stage reuses the KV of the stored prompt that shares the longest
        prefix (a chat template's system prompt, a conversation's earlier turns) and computes only the rest;
        it names that prompt and the length to every later stage, which reuse their own layers' KV of it.
        A later stage that no longer holds it refuses, and the first stage redoes the prefill in full."""
        sid = str(msg.meta.get("session", ""))
        if not sid:
            raise WorkerError("serve_prefill needs meta.session")
        x = self._input(msg)
        if x.shape[0] != 1:
            raise WorkerError("serve_prefill takes one sequence (batch of one)")
        meta = dict(msg.meta)
        if self.stage.first:
            ids = tuple(int(t) for t in x[0].tolist())
            meta["prompt_key"] = _prompt_key(ids)
            reuse_key, reuse_len = self._longest_prefix(ids) if self.args.prefix_cache > 0 else (None, 0)
            try:
                return self._prefill(sid, x, meta, ids, reuse_key, reuse_len)
            except WorkerError as err:
                if reuse_len and _prefix_lost(err):
                    with self.lock:  # a later stage lost it: do not offer it again
                        self.prefixes.pop(str(reuse_key), None)
                    return self._prefill(sid, x, meta, ids, None, 0)
                raise
        return self._prefill(sid, x, meta, None, meta.get("reuse_key"), int(meta.get("reuse_len", 0)))

    def _prefill(self, sid: str, x: torch.Tensor, meta: dict[str, Any], ids: tuple[int, ...] | None,
                 reuse_key: str | None, reuse_len: int) -> Message:
        with self.lock:
            if sid in self.batch_rows:
                self._dissolve()
            if sid not in self.serve and len(self.serve) >= self.args.max_sessions:
                raise WorkerError(f"this device holds {len(self.serve)} sequences, its limit (--max-sessions)")
            cache = growable_cache(self.stage.config)
            if reuse_len:
                held = self.prefixes.get(str(reuse_key))
                if held is None:
                    raise WorkerError(f"{PREFIX_LOST}: stage {self.stage.start}:{self.stage.end} no longer has "
                                      f"prompt {reuse_key}")
                cache = _cache_from(self.stage.config, [(k[:, :, :reuse_len], v[:, :, :reuse_len])
                                                        for k, v in held[1]])
                self.prefixes.move_to_end(str(reuse_key))
                if self.stage.first:  # later stages get hidden states of the new positions only
                    x = x[:, reuse_len:]
            t0 = time.perf_counter()
            n = x.shape[1]
            out = self._run(x, cache, torch.arange(reuse_len, reuse_len + n).unsqueeze(0), None)
            self.serve[sid] = cache
            self._remember(str(meta["prompt_key"]), ids, cache)
            self.forwards += 1
            compute_s = time.perf_counter() - t0

        def undo() -> None:
            self.serve.pop(sid, None)

        meta = {**meta, "reuse_key": reuse_key, "reuse_len": reuse_len}
        reply = self._reply("serve_prefill", meta, out, compute_s, undo)
        if reuse_len:  # counted once the whole chain took it
            self.prefix_hits += 1
            self.prefix_tokens_saved += reuse_len
        return reply

    def op_serve_prefill_many(self, msg: Message) -> Message:
        """Several new sequences in one forward (requests that arrived together): each gets what
        ``serve_prefill`` gives it alone (its own cache, its first token), with its own prefix reuse.

        First stage: ``meta.sessions`` and ``meta.prompts`` (one list of token ids per session). The rows reuse
        prefixes of different lengths and have different numbers of new tokens, so the pass is ragged: the
        reused prefixes are stacked left-padded, the new tokens are right-aligned in one block, and a prepared
        mask keeps every row to its own real positions. Later stages get the block's hidden states with
        ``meta.m`` (new tokens per row) and ``meta.reuse`` (per row: the stored prompt's key and length)."""
        sessions = [str(x) for x in msg.meta.get("sessions", [])]
        if not sessions or len(set(sessions)) != len(sessions) or not all(sessions):
            raise WorkerError("serve_prefill_many needs meta.sessions: distinct, non-empty session ids")
        meta = dict(msg.meta)
        if not self.stage.first:
            return self._prefill_many(sessions, self._input(msg), meta, None)
        prompts = meta.pop("prompts", None)
        if not isinstance(prompts, list) or len(prompts) != len(sessions) or not all(
                isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts):
            raise WorkerError("serve_prefill_many needs meta.prompts: one non-empty list of token ids per session")
        ids = [tuple(p) for p in prompts]
        meta["prompt_keys"] = [_prompt_key(p) for p in ids]
        reuse = [self._longest_prefix(p) if self.args.prefix_cache > 0 else (None, 0) for p in ids]
        try:
            return self._prefill_many(sessions, ids, meta, reuse)
        except WorkerError as err:
            if any(n for _, n in reuse) and _prefix_lost(err):
                with self.lock:  # a later stage lost one: offer none of them again, and compute in full
                    for key, n in reuse:
                        if n:
                            self.prefixes.pop(str(key), None)
                return self._prefill_many(sessions, ids, meta, [(None, 0)] * len(ids))
            raise

    def _prefill_many(self, sessions: list[str], x: Any, meta: dict[str, Any],
                      reuse: list[tuple[str | None, int]] | None) -> Message:
        st = self.stage
        if st.first:  # x: the prompts; build the block of new tokens, right-aligned
            ids: list[tuple[int, ...]] | None = x
            assert reuse is not None and ids is not None
            m = [len(p) - n for p, (_, n) in zip(ids, reuse, strict=True)]
            width = max(m)
            block = torch.zeros((len(ids), width), dtype=torch.int64)
            for i, (p, (_, n)) in enumerate(zip(ids, reuse, strict=True)):
                block[i, width - m[i]:] = torch.tensor(p[n:], dtype=torch.int64)
            x = block
            meta["m"], meta["reuse"] = m, [[k, n] for k, n in reuse]
        else:
            ids = None
            m = [int(v) for v in meta.get("m", [])]
            reuse = [(k, int(n)) for k, n in meta.get("reuse", [])]
            if len(m) != len(sessions) or len(reuse) != len(sessions) or x.shape[:2] != (len(sessions), max(m)):
                raise WorkerError(f"serve_prefill_many: {len(sessions)} sessions but m={m}, reuse for {len(reuse)}, "
                                  f"hidden {tuple(x.shape)}")
        with self.lock:
            taken = [s for s in sessions if s in self.serve]
            if taken:
                raise WorkerError(f"session(s) {taken} are already being served")
            if len(self.serve) + len(sessions) > self.args.max_sessions:
                raise WorkerError(f"this device holds {len(self.serve)} sequences and {len(sessions)} more exceed its "
                                  "limit (--max-sessions)")
            held = []
            for key, n in reuse:
                if n:
                    kv = self.prefixes.get(str(key))
                    if kv is None:
                        raise WorkerError(f"{PREFIX_LOST}: stage {st.start}:{st.end} no longer has prompt {key}")
                    self.prefixes.move_to_end(str(key))
                    held.append([(k[:, :, :n], v[:, :, :n]) for k, v in kv[1]])
                else:
                    held.append(None)
            lens = torch.tensor([n for _, n in reuse], dtype=torch.long)
            mt = torch.tensor(m, dtype=torch.long)
            past, n_new = int(lens.max()), x.shape[1]
            cache = growable_cache(st.config)
            if past:  # the reused prefixes, left-padded to the longest (rows without one: all padding)
                ref = next(h for h in held if h is not None)
                layers = []
                for j, (rk, rv) in enumerate(ref):
                    ks = [_left(h[j][0], past - h[j][0].shape[-2]) if h is not None else rk.new_zeros(
                        (1, rk.shape[1], past, rk.shape[3])) for h in held]
                    vs = [_left(h[j][1], past - h[j][1].shape[-2]) if h is not None else rv.new_zeros(
                        (1, rv.shape[1], past, rv.shape[3])) for h in held]
                    layers.append((torch.cat(ks), torch.cat(vs)))
                cache = _cache_from(st.config, layers)
            past_real = torch.arange(past).unsqueeze(0) >= (past - lens).unsqueeze(1)
            mask = _ragged_mask(past_real, mt, n_new)
            positions = (lens.unsqueeze(1) + torch.arange(n_new).unsqueeze(0) - (n_new - mt).unsqueeze(1)).clamp(min=0)
            t0 = time.perf_counter()
            out = self._run(x, cache, positions, mask)
            kv = _kv(cache)
            for i, sid in enumerate(sessions):  # each row's real columns become its own cache: its reused
                # prefix (the last lens[i] past columns) and its new tokens (the last m[i] columns), one copy each
                real = (slice(past - int(lens[i]), past), slice(past + n_new - m[i], past + n_new))
                own = cache_from_pieces(st.config, [[(k[i:i + 1, :, c], v[i:i + 1, :, c]) for c in real]
                                                    for k, v in kv])
                self.serve[sid] = own
                self._remember(str(meta["prompt_keys"][i]), ids[i] if ids is not None else None, own)
            self.forwards += 1
            compute_s = time.perf_counter() - t0

        def undo() -> None:
            for sid in sessions:
                self.serve.pop(sid, None)

        reply = self._reply("serve_prefill_many", meta, out, compute_s, undo)
        hits = [n for _, n in reuse if n]
        self.prefix_hits += len(hits)  # counted once the whole chain took it
        self.prefix_tokens_saved += sum(hits)
        return reply

    def op_serve_decode(self, msg: Message) -> Message:
        rows = tuple(str(r) for r in msg.meta.get("rows", []))
        x = self._input(msg)
        if not rows or x.shape[0] != len(rows) or x.shape[1] != 1:
            raise WorkerError(f"serve_decode: {len(rows)} rows but input of shape {tuple(x.shape)} "
                              "(expected one new token per row)")
        ended = [str(e) for e in msg.meta.get("end", [])]
        if set(ended) & set(rows):
            raise WorkerError("serve_decode: a session cannot both end and decode")
        with self.lock:
            for e in ended:  # finished since the last step: freed here, the rows that stay restack once below
                self.serve.pop(e, None)
            self._assemble(rows)
            assert self.batch_cache is not None
            width = _seq_len(self.batch_cache)
            lens = self.batch_lens.clone()
            padding = None
            if bool((lens != width).any()):
                idx = torch.arange(width + 1).unsqueeze(0)
                padding = (idx >= (width - lens).unsqueeze(1)).long()
            t0 = time.perf_counter()
            try:
                out = self._run(x, self.batch_cache, lens.unsqueeze(1), padding)
            except Exception:
                self._crop_batch(width)  # never leave a half-updated cache behind
                raise
            self.batch_lens = lens + 1
            self.forwards += 1
            compute_s = time.perf_counter() - t0

        def undo() -> None:
            if self.batch_rows == rows:
                self._crop_batch(width)
                self.batch_lens = lens

        return self._reply("serve_decode", {**msg.meta, "batch": len(rows)}, out, compute_s, undo)

    def op_serve_end(self, msg: Message) -> Message:
        sessions = [str(s) for s in msg.meta.get("sessions", [])]
        with self.lock:
            for s in sessions:
                self.serve.pop(s, None)
            if any(s in self.batch_rows for s in sessions):  # the rest of the batch stays stacked
                rest = tuple(s for s in self.batch_rows if s not in sessions)
                if rest:
                    self._assemble(rest)
                else:
                    self._dissolve()
        if not self.stage.last and self.next is not None:
            self._forward_next("serve_end", msg.meta, {})
        return Message("ok")

    def op_serve_reset(self, msg: Message) -> Message:
        with self.lock:
            self.serve.clear()
            self.prefixes.clear()
            self._dissolve()
        if not self.stage.last and self.next is not None:
            self._forward_next("serve_reset", msg.meta, {})
        return Message("ok")

    def op_ping(self, msg: Message) -> Message:
        reply = super().op_ping(msg)
        reply.meta.update(serve_sessions=len(self.serve), batch=len(self.batch_rows), rebuilds=self.rebuilds,
                          prefix_hits=self.prefix_hits, prefix_tokens_saved=self.prefix_tokens_saved,
                          prefix_cache=self.args.prefix_cache, packed_linears=self.packed_linears,
                          device=str(self.runtime.device), dtype=str(self.runtime.dtype).removeprefix("torch."))
        return reply


def build_parser() -> argparse.ArgumentParser:
    """The worker's options (``--device`` and ``--dtype`` included)."""
    p = worker_parser()
    p.prog = "python -m fedintel.serving.device"
    p.add_argument("--prefix-cache", type=count_arg, default=8,
                   help="prompts whose KV cache is kept for prefix reuse (0: off)")
    p.add_argument("--prefix-min", type=count_arg, default=4, help="shortest shared prefix worth reusing, tokens")
    p.set_defaults(batch_hint=16)  # the decode batch (limits.max_batch)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point (see :func:`fedintel.inference.worker.main`)."""
    return worker_main(argv, ServingWorker, build_parser())


if __name__ == "__main__":
    sys.exit(main())
