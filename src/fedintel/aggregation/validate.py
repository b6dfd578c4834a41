"""Checks every client update must pass before it is aggregated.

A corrupt or malicious update (wrong keys or shapes, NaN/Inf, absurd norm, stale base) is rejected and
logged, never averaged. What a client says about itself (samples, FLOPs, steps, tokens, wire bytes, loss)
is checked against what the server knows of its shard (:func:`check_claims`) before it feeds the
weighted average, the simulated clock or the metrics: a client claiming 10^12 samples is capped to its
shard, a client claiming impossible compute or a negative loss is rejected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fedintel.errors import FedintelError
from fedintel.types import MASKED_KEY, AdapterState, Update


class UpdateRejected(FedintelError, ValueError):
    """An update failed validation; the message says which check."""


@dataclass(frozen=True)
class ClaimLimits:
    """The most a client can truthfully report for one job, from the server's knowledge of its shard."""

    max_samples: int
    """Training examples in the client's shard."""
    max_steps: int
    max_tokens: int
    max_flops: float
    """FLOPs of ``max_steps`` full batches at the maximum sequence length."""
    dense_bytes: int
    """Bytes of the dense delta; ``wire_bytes`` (a compressed upload) can only be smaller."""


def check_claims(update: Update, limits: ClaimLimits) -> tuple[Update, str | None]:
    """``update`` with ``num_samples`` capped to the shard, and a note if it was capped.

    Raises :class:`UpdateRejected` when a self-reported value is impossible: a loss that is not a finite
    non-negative number, or FLOPs, steps, tokens or wire bytes outside ``[0, limit]``.
    """
    cid = update.client_id
    loss = update.train_loss
    if not isinstance(loss, int | float) or not math.isfinite(loss) or loss < 0:
        raise UpdateRejected(f"client {cid}: reported training loss {loss!r} is not a finite non-negative number")
    for name, value, bound in (("flops", update.flops, limits.max_flops), ("steps", update.steps, limits.max_steps),
                               ("tokens", update.tokens, limits.max_tokens)):
        if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= bound * (1 + 1e-9):
            raise UpdateRejected(f"client {cid}: reported {name} {value!r} outside [0, {bound:.4g}] for its shard")
    wb = update.wire_bytes
    if wb is not None and (not isinstance(wb, int) or not 0 < wb <= limits.dense_bytes):
        raise UpdateRejected(f"client {cid}: reported wire bytes {wb!r} outside (0, {limits.dense_bytes}]")
    if not isinstance(update.num_samples, int) or update.num_samples <= 0:
        raise UpdateRejected(f"client {cid}: num_samples must be a positive integer, got {update.num_samples!r}")
    if update.num_samples > limits.max_samples:
        note = f"client {cid}: claimed {update.num_samples} samples, capped to its shard's {limits.max_samples}"
        return dataclasses.replace(update, num_samples=limits.max_samples), note
    return update, None


def update_norm(delta: AdapterState) -> float:
    """Global L2 norm of a delta across all tensors."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in delta.values()))


def validate_update(
    update: Update,
    reference: AdapterState,
    *,
    max_norm: float | None = None,
    expected_version: int | None = None,
) -> None:
    """Raise :class:`UpdateRejected` unless ``update`` matches ``reference`` and is sane.

    A securely masked update (``delta`` = ``{MASKED_KEY: words}``) can only be checked for its shape (one int64
    word per adapter value, plus one for the masked weight), sample count and version: its values look like
    uniform noise. Its NaN/Inf and overflow checks ran on the client before masking, and ``max_norm`` cannot be
    applied (the config refuses ``federation.max_update_norm`` with secure aggregation on Flower).
    """
    import torch

    if MASKED_KEY in update.delta:
        _validate_masked(update, reference, max_norm, expected_version)
        return
    keys, ref_keys = set(update.delta), set(reference)
    if keys != ref_keys:
        extra, missing = sorted(keys - ref_keys), sorted(ref_keys - keys)
        raise UpdateRejected(f"client {update.client_id}: tensor keys differ (extra {extra[:2]}, missing {missing[:2]})")
    for k, ref in reference.items():
        t = update.delta[k]
        if not isinstance(t, torch.Tensor):
            raise UpdateRejected(f"client {update.client_id}: {k} is not a tensor")
        if t.shape != ref.shape:
            raise UpdateRejected(f"client {update.client_id}: {k} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise UpdateRejected(f"client {update.client_id}: {k} has dtype {t.dtype}, expected {ref.dtype}")
        if not torch.isfinite(t).all():
            raise UpdateRejected(f"client {update.client_id}: {k} holds NaN or Inf")
    for name, extra in update.extras.items():  # a federated optimizer's tensors (SCAFFOLD's control variates)
        if set(extra) != ref_keys or any(extra[k].shape != reference[k].shape for k in ref_keys):
            raise UpdateRejected(f"client {update.client_id}: {name} does not match the adapter's tensors")
        if not all(torch.isfinite(t).all() for t in extra.values()):
            raise UpdateRejected(f"client {update.client_id}: {name} holds NaN or Inf")
    if not (update.num_samples > 0):
        raise UpdateRejected(f"client {update.client_id}: num_samples must be positive, got {update.num_samples}")
    if expected_version is not None and update.base_version != expected_version:
        raise UpdateRejected(
            f"client {update.client_id}: trained on version {update.base_version}, expected {expected_version}"
        )
    if max_norm is not None:
        norm = update_norm(update.delta)
        if norm > max_norm:
            raise UpdateRejected(f"client {update.client_id}: update norm {norm:.3g} exceeds {max_norm:.3g}")


def _validate_masked(update: Update, reference: AdapterState, max_norm: float | None,
                     expected_version: int | None) -> None:
    import torch

    cid = update.client_id
    words = update.delta[MASKED_KEY]
    n = sum(t.numel() for t in reference.values())
    if set(update.delta) != {MASKED_KEY} or not isinstance(words, torch.Tensor) or words.dtype != torch.int64:
        raise UpdateRejected(f"client {cid}: a masked update must be one int64 vector and nothing else")
    if words.dim() != 1 or words.numel() not in (n, n + 1):
        raise UpdateRejected(f"client {cid}: masked update of shape {tuple(words.shape)}, expected ({n},) or ({n + 1},)")
    if update.extras:
        raise UpdateRejected(f"client {cid}: a masked update carries no optimizer tensors")
    if max_norm is not None:
        raise UpdateRejected(f"client {cid}: federation.max_update_norm cannot be checked on a masked update")
    if not (update.num_samples > 0):
        raise UpdateRejected(f"client {cid}: num_samples must be positive, got {update.num_samples}")
    if expected_version is not None and update.base_version != expected_version:
        raise UpdateRejected(f"client {cid}: trained on version {update.base_version}, expected {expected_version}")
