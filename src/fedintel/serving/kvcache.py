"""A KV cache that appends in place: Hugging Face's ``DynamicCache`` with each full-attention layer writing new
positions into a preallocated buffer instead of concatenating.

``DynamicLayer.update`` concatenates: every decode step copies the whole cache of every layer to add one
column (on a 16-row batch of SmolLM2 that was 13 % of the step's time on the CPU). :class:`GrowableLayer`
keeps a buffer with spare columns; ``keys``/``values`` are views of its first ``n`` columns, an update writes
the new columns after them, and only running out of room copies (to a buffer half as large again). Cropping
(``crop``) shortens the views, so a later update overwrites the columns it cut, exactly as a fresh
concatenation would have held.

A view handed out earlier (a stored prompt prefix) stays valid as long as nobody crops below its length and
writes again; the serving device never does: a sequence is only cropped back to a length it had after its
prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` that appends into spare columns of a buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def _owns_views(self) -> bool:
        """Whether ``keys``/``values`` are still the leading columns of this layer's buffers (someone may have
        assigned other tensors, e.g. ``batch_select_indices``)."""
        kb, vb = self._kbuf, self._vbuf
        return (kb is not None and vb is not None and self.keys is not None and self.values is not None
                and self.keys.data_ptr() == kb.data_ptr() and self.values.data_ptr() == vb.data_ptr()
                and self.keys.shape[:2] == kb.shape[:2] and self.keys.stride() == kb.stride()
                and self.values.stride() == vb.stride())

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys is not None and self.keys.numel() else 0
        new = n + key_states.shape[-2]
        if not self._owns_views() or self._kbuf is None or new > self._kbuf.shape[-2] or n == 0:
            cap = new + max(16, new // 2)
            kb = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
            vb = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
            if n:
                kb[:, :, :n] = self.keys
                vb[:, :, :n] = self.values
            self._kbuf, self._vbuf = kb, vb
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[:, :, n:new] = key_states
        self._vbuf[:, :, n:new] = value_states
        self.keys, self.values = self._kbuf[:, :, :new], self._vbuf[:, :, :new]
        return self.keys, self.values

    def fill(self, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Start this empty layer from ``pieces`` of (keys, values), joined along the sequence in one copy each
        (``torch.cat`` and then ``update`` would copy them twice)."""
        if self.is_initialized and self.keys is not None and self.keys.numel():
            raise ValueError("fill starts an empty layer; this one already holds columns")
        k0, v0 = pieces[0]
        self.lazy_initialization(k0, v0)
        new = sum(k.shape[-2] for k, _ in pieces)
        cap = new + max(16, new // 2)
        kb = k0.new_empty((*k0.shape[:2], cap, k0.shape[-1]))
        vb = v0.new_empty((*v0.shape[:2], cap, v0.shape[-1]))
        at = 0
        for k, v in pieces:
            kb[:, :, at:at + k.shape[-2]] = k
            vb[:, :, at:at + v.shape[-2]] = v
            at += k.shape[-2]
        self._kbuf, self._vbuf = kb, vb
        self.keys, self.values = kb[:, :, :new], vb[:, :, :new]

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


def growable_cache(config: Any) -> DynamicCache:
    """An empty cache for ``config`` whose plain full-attention layers append in place (others unchanged)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_from_pieces(config: Any, layers: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> DynamicCache:
    """A growable cache whose layer ``i`` holds ``layers[i]``'s (keys, values) pieces joined along the sequence."""
    cache = growable_cache(config)
    for layer, pieces in zip(cache.layers, layers, strict=True):
        if isinstance(layer, GrowableLayer):
            layer.fill(pieces)
        else:  # a layer kind without a buffer (sliding window ...): Hugging Face's own update
            layer.update(torch.cat([k for k, _ in pieces], -2), torch.cat([v for _, v in pieces], -2))
    return cache
