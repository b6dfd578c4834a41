"""Checks every client update must pass before it is aggregated.

A corrupt or malicious update (wrong keys or shapes, NaN/Inf, absurd norm, stale base) is rejected and
logged, never averaged.
"""

from __future__ import annotations

import math

import torch

from fedintel.types import AdapterState, Update


class UpdateRejected(ValueError):
    """An update failed validation; the message says which check."""


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
    """Raise :class:`UpdateRejected` unless ``update`` matches ``reference`` and is sane."""
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
