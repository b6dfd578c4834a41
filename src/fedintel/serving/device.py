"""A serving device: the inference worker plus batched decoding with a KV cache per sequence.

``python -m fedintel.serving.device`` takes every option of :mod:`fedintel.inference.worker` plus
``--device``/``--dtype`` (``runtime.device``/``runtime.dtype``: where the stage's weights live and in which
precision) and adds four operations that :mod:`fedintel.serving.scheduler` drives:

``serve_prefill``  ``{"session"}`` + ``input_ids`` (1, n) or ``hidden`` (1, n, h): a new sequence, alone
                   (batch of one, exactly what a request gets when served alone); down the chain
``serve_decode``   ``{"rows": [session, ...]}`` + ``input_ids`` (B, 1) or ``hidden`` (B, 1, h): one token of
                   every row in one batched forward; the last stage answers ``argmax`` (B,)
``serve_end``      ``{"sessions": [...]}``: free them (a request finished, failed or its client left)
``serve_reset``    drop every serving session (the front restarted its scheduler)

Batching (continuous batching, as vLLM and TGI do it, without paged memory): each sequence owns a KV
cache. While the set of rows stays the same, the stage keeps them stacked as one left-padded cache and
appends one position per step; when a row joins or leaves, the stacked cache is split back into the
sequences' caches and restacked (one copy of the KV cache per change of membership, not per step).
Each row gets its true positions (RoPE) and a padding mask, so a row's tokens are what it computes alone
up to floating-point summation order (batched matrix products may round differently in the last bit;
greedy tokens agree unless two logits are that close).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from fedintel.inference.protocol import Message
from fedintel.inference.worker import Worker, WorkerError
from fedintel.inference.worker import build_parser as worker_parser
from fedintel.inference.worker import main as worker_main


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(config: Any, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache(config=config)
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    return cache


def _seq_len(cache: DynamicCache) -> int:
    return cache.get_seq_length()


class ServingWorker(Worker):
    """:class:`~fedintel.inference.worker.Worker` with the batched serving operations."""

    def __init__(self, args: argparse.Namespace, security: Any) -> None:
        from fedintel.config import RuntimeConfig
        from fedintel.runtime import resolve_runtime

        self.runtime = resolve_runtime(RuntimeConfig(device=args.device, dtype=args.dtype), apply_threads=False)
        super().__init__(args, security)
        if self.role != "lm":
            raise WorkerError("a serving device serves a language model (--role lm)")
        self.stage.to(self.runtime.device)
        # session -> its own cache (batch of one), or None while its row lives in the stacked batch cache
        self.serve: dict[str, DynamicCache | None] = {}
        self.batch_rows: tuple[str, ...] = ()
        self.batch_cache: DynamicCache | None = None
        self.batch_lens = torch.zeros(0, dtype=torch.long)
        self.rebuilds = 0

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
    def _dissolve(self) -> None:
        """Split the stacked cache back into the sequences' own caches."""
        if self.batch_cache is not None:
            kv = _kv(self.batch_cache)
            width = kv[0][0].shape[-2] if kv else 0
            for i, sid in enumerate(self.batch_rows):
                if sid in self.serve:
                    pad = width - int(self.batch_lens[i])
                    self.serve[sid] = _cache_from(self.stage.config,
                                                  [(k[i:i + 1, :, pad:].clone(), v[i:i + 1, :, pad:].clone())
                                                   for k, v in kv])
        self.batch_rows, self.batch_cache = (), None
        self.batch_lens = torch.zeros(0, dtype=torch.long)

    def _assemble(self, rows: tuple[str, ...]) -> None:
        """Make ``rows`` the stacked batch (left-padded to the longest row)."""
        if rows == self.batch_rows:
            return
        missing = [s for s in rows if s not in self.serve]
        if missing:
            raise WorkerError(f"unknown serving session(s) {missing} (never prefilled, ended or reset)")
        if len(set(rows)) != len(rows):
            raise WorkerError("a session appears twice in one decode batch")
        self._dissolve()
        caches = [self.serve[s] for s in rows]
        lens = [_seq_len(c) for c in caches]  # type: ignore[arg-type]
        width = max(lens)
        layers = []
        for j in range(len(caches[0].layers)):  # type: ignore[union-attr]
            ks, vs = [], []
            for c, n in zip(caches, lens, strict=True):
                k, v = c.layers[j].keys, c.layers[j].values  # type: ignore[union-attr]
                ks.append(torch.nn.functional.pad(k, (0, 0, width - n, 0)))
                vs.append(torch.nn.functional.pad(v, (0, 0, width - n, 0)))
            layers.append((torch.cat(ks), torch.cat(vs)))
        self.batch_cache = _cache_from(self.stage.config, layers)
        self.batch_rows = rows
        self.batch_lens = torch.tensor(lens, dtype=torch.long)
        for s in rows:
            self.serve[s] = None
        self.rebuilds += 1

    def _crop_batch(self, width: int) -> None:
        if self.batch_cache is not None and _seq_len(self.batch_cache) > width:
            self.batch_cache.crop(width)

    # ------------------------------------------------------------------ operations
    def op_serve_prefill(self, msg: Message) -> Message:
        sid = str(msg.meta.get("session", ""))
        if not sid:
            raise WorkerError("serve_prefill needs meta.session")
        x = self._input(msg)
        if x.shape[0] != 1:
            raise WorkerError("serve_prefill takes one sequence (batch of one)")
        with self.lock:
            if sid in self.batch_rows:
                self._dissolve()
            if sid not in self.serve and len(self.serve) >= self.args.max_sessions:
                raise WorkerError(f"this device holds {len(self.serve)} sequences, its limit (--max-sessions)")
            cache = self.stage.new_cache()
            t0 = time.perf_counter()
            n = x.shape[1]
            out = self._run(x, cache, torch.arange(n).unsqueeze(0), None)
            self.serve[sid] = cache
            self.forwards += 1
            compute_s = time.perf_counter() - t0

        def undo() -> None:
            self.serve.pop(sid, None)

        return self._reply("serve_prefill", msg.meta, out, compute_s, undo)

    def op_serve_decode(self, msg: Message) -> Message:
        rows = tuple(str(r) for r in msg.meta.get("rows", []))
        x = self._input(msg)
        if not rows or x.shape[0] != len(rows) or x.shape[1] != 1:
            raise WorkerError(f"serve_decode: {len(rows)} rows but input of shape {tuple(x.shape)} "
                              "(expected one new token per row)")
        with self.lock:
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
            if any(s in self.batch_rows for s in sessions):
                self._dissolve()
            for s in sessions:
                self.serve.pop(s, None)
        if not self.stage.last and self.next is not None:
            self._forward_next("serve_end", msg.meta, {})
        return Message("ok")

    def op_serve_reset(self, msg: Message) -> Message:
        with self.lock:
            self.serve.clear()
            self._dissolve()
        if not self.stage.last and self.next is not None:
            self._forward_next("serve_reset", msg.meta, {})
        return Message("ok")

    def op_ping(self, msg: Message) -> Message:
        reply = super().op_ping(msg)
        reply.meta.update(serve_sessions=len(self.serve), batch=len(self.batch_rows), rebuilds=self.rebuilds,
                          device=str(self.runtime.device), dtype=str(self.runtime.dtype).removeprefix("torch."))
        return reply


def build_parser() -> argparse.ArgumentParser:
    """The worker's options (``--device`` and ``--dtype`` included)."""
    p = worker_parser()
    p.prog = "python -m fedintel.serving.device"
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point (see :func:`fedintel.inference.worker.main`)."""
    return worker_main(argv, ServingWorker, build_parser())


if __name__ == "__main__":
    sys.exit(main())
