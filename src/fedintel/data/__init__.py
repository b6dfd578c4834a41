"""Offline corpora, partitioners and tokenisation."""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "build_federated_data": "federated",
    "BUILTIN_DATASETS": "corpora",
    "ClientData": "federated",
    "DatasetError": "corpora",
    "FederatedData": "federated",
    "TokenizedSet": "tokenize",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
