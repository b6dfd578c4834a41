"""Small typed values that the parts of fedintel exchange.

Schemes decide *when and who*, aggregators *how to combine*, engines *where it runs*, the network *how
long it takes*; they meet only in these values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fedintel.seeding import derive_seed

if TYPE_CHECKING:  # annotations only: light commands (the CLI's --help, Flower lookups) skip importing torch
    import torch

AdapterState = dict[str, "torch.Tensor"]
"""The trainable tensors of a PEFT adapter, keyed as in PEFT's own saved state dict."""


MASKED_KEY = "secagg.masked"
"""The only key of an :class:`Update`'s ``delta`` that holds a securely masked upload (``engine: flower`` with
``privacy.secure_aggregation``): one int64 vector, the mod-2^64 masked fixed-point words. Only the unmasked sum
of such updates means anything (:mod:`fedintel.privacy.secagg`)."""


def state_nbytes(state: AdapterState) -> int:
    """Bytes needed to send ``state`` as raw tensors (dtype-aware, no framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def clone_state(state: AdapterState) -> AdapterState:
    """A detached copy of ``state`` that later in-place training cannot change."""
    return {k: v.detach().clone() for k, v in state.items()}


@dataclass
class Update:
    """What one client sends back after local training.

    ``delta`` is the client's adapter minus the adapter it started from (``base_version``), so every
    aggregation rule, DP clipping and secure masking works on the same quantity.
    """

    client_id: int
    delta: AdapterState
    num_samples: int
    base_version: int
    train_loss: float
    steps: int
    tokens: int
    flops: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    wire_bytes: int | None = None
    """Bytes actually sent when smaller than the dense tensors (e.g. a low-rank client's LoRA factors)."""
    extras: dict[str, AdapterState] = field(default_factory=dict)
    """Tensors a federated optimizer uploads with the delta (SCAFFOLD's control-variate change)."""

    @property
    def nbytes(self) -> int:
        """Uplink payload size in bytes (the delta, or its ``wire_bytes``, plus any ``extras``)."""
        delta = self.wire_bytes if self.wire_bytes is not None else state_nbytes(self.delta)
        return delta + sum(state_nbytes(e) for e in self.extras.values())


@dataclass
class ClientResult:
    """Per-client outcome of a round, as recorded in the metrics store."""

    client_id: int
    accepted: bool
    reason: str = ""
    train_loss: float = float("nan")
    num_samples: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainJob:
    """Train ``client_id`` starting from ``state`` (global version ``version``) in round ``round_idx``."""

    client_id: int
    state: AdapterState
    version: int
    round_idx: int
    salt: int = 0
    """Distinguishes repeated jobs of one client in one round (asynchronous scheme)."""
    extras: dict[str, AdapterState] = field(default_factory=dict)
    """Tensors a federated optimizer sends with the adapter (SCAFFOLD's control variates)."""

    def seed(self, run_seed: int) -> int:
        """The seed of this job's batch order and dropout: a function of (run seed, round, client)."""
        parts = (run_seed, self.round_idx, self.client_id, 7) + ((self.salt,) if self.salt else ())
        return derive_seed(*parts)


EvalSplit = Literal["train", "eval"]
EvalMeasure = Literal["metrics", "pick_loss"]


@dataclass
class EvalJob:
    """Evaluate each adapter of ``states`` on client ``client_id``'s own data, where that data lives.

    As Flower's ``configure_evaluate``: the adapters travel to the client, only numbers come back.
    ``split``: the client's ``train`` rows (as it trains on them) or its held-out ``eval`` rows.
    ``measure``: ``metrics`` is the run's evaluation (``eval.batch_size``, ``eval.max_samples``): token-weighted
    ``loss`` and ``perplexity``, or ``loss`` and ``accuracy``; ``pick_loss`` is IFCA's cluster score, the model's
    mean loss summed over the first ``clustering.ifca_eval_batches`` micro-batches, as ``loss``.
    """

    client_id: int
    states: list[AdapterState]
    round_idx: int
    split: EvalSplit = "eval"
    measure: EvalMeasure = "metrics"


@dataclass
class EvalResult:
    """What a client sends back for an :class:`EvalJob`: one metrics dict per adapter, in the job's order
    (empty dicts when the split holds no rows)."""

    client_id: int
    metrics: list[dict[str, float]]


@dataclass
class ClientFailure:
    """A client that crashed, timed out or could not train (or evaluate); the round goes on without it."""

    client_id: int
    reason: str
    kind: str = "failed"
    """The event recorded for it: ``failed`` (crash, timeout, bad reply), ``diverged`` (NaN/Inf loss) or
    ``rejected`` (implausible self-reported values); a failed :class:`EvalJob` is recorded as ``eval_failed``."""
