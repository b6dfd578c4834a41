"""The data-level attack ``label_flip``: a malicious client trains on flipped class labels.

Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020.
It only makes sense for ``model.task = classification`` (the config refuses it otherwise).
:class:`LabelFlip` is the client data mod; :func:`flip_labels` never mutates its input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedintel.data.tokenize import TokenizedSet


def flip_labels(
    labels: torch.Tensor | Sequence[int] | np.ndarray,
    num_labels: int,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """Poisoned copy of class ``labels`` (int64 tensor).

    Without ``rng``: the fixed permutation ``y -> num_labels - 1 - y`` (every label changes when
    ``num_labels`` is even; the middle class is kept when it is odd). With ``rng``: each label becomes a
    uniformly random *different* class. Negative labels (for example ``-100``, "ignore") are kept.
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be >= 2, got {num_labels}")
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).to(
        torch.int64
    )
    valid = y >= 0
    if bool((y[valid] >= num_labels).any()):
        raise ValueError(f"labels must be < num_labels={num_labels}")
    if rng is None:
        flipped = num_labels - 1 - y
    else:
        offset = torch.randint(1, num_labels, y.shape, generator=rng)
        flipped = (y + offset) % num_labels
    return torch.where(valid, flipped, y)


@dataclass(frozen=True)
class LabelFlip:
    """Client data mod: each client in ``malicious`` trains on its shard with labels flipped; the others on theirs.

    A shard without labels (causal LM) is left as it is.
    """

    num_labels: int
    malicious: frozenset[int]

    def __call__(self, client_id: int, data: TokenizedSet) -> TokenizedSet:
        if client_id not in self.malicious or data.labels is None:
            return data
        return dataclasses.replace(data, labels=flip_labels(torch.tensor(data.labels), self.num_labels).tolist())
