"""LoRA factor pairs and heterogeneous ranks: which tensors pair up, a rank-r slice, its bytes on the wire.

A rank-``r`` client (HetLoRA-style) trains the first ``r`` components of the global rank-``R`` adapter; the
others are zero and stay zero. Used by the training job (truncation, wire bytes) and by exact LoRA
aggregation (pairs).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedintel.types import AdapterState


def lora_pairs(keys: Sequence[str]) -> list[tuple[str, str]]:
    """``(lora_A key, lora_B key)`` pairs of an adapter state."""
    pairs = []
    for k in keys:
        if "lora_A" in k:
            b = k.replace("lora_A", "lora_B")
            if b in keys:
                pairs.append((k, b))
    return pairs


def truncate_rank(state: AdapterState, rank: int) -> AdapterState:
    """Zero the LoRA components beyond ``rank`` (rows of A, columns of B): a rank-``rank`` client.

    Zeroed components get zero gradients, so they stay zero while the client trains.
    """
    out = dict(state)
    for a, b in lora_pairs(list(state)):
        if state[a].shape[0] > rank:
            out[a] = state[a].clone()
            out[a][rank:] = 0
            out[b] = state[b].clone()
            out[b][:, rank:] = 0
    return out


def lora_wire_bytes(delta: AdapterState, rank: int) -> int:
    """Bytes a rank-``rank`` client sends: only its slice of each LoRA factor, other tensors whole."""
    lora = {k for pair in lora_pairs(list(delta)) for k in pair}
    total = 0
    for k, t in delta.items():
        if k in lora:
            full = t.shape[0] if "lora_A" in k else t.shape[1]
            total += t.numel() * min(rank, full) // full * t.element_size()
        else:
            total += t.numel() * t.element_size()
    return total
