"""What every scheme shares: client sampling, validating and recording updates, evaluation."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedintel.aggregation.base import Aggregator
from fedintel.aggregation.validate import UpdateRejected, validate_update
from fedintel.engines.base import ClientFailure, Engine
from fedintel.tracking.progress import NullReporter, Reporter
from fedintel.types import AdapterState, Update, state_nbytes
from fedintel.world import World, derive_seed

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """What one round produced, ready for the metrics store."""

    metrics: dict[str, float] = field(default_factory=dict)
    clients: dict[int, dict[str, float]] = field(default_factory=dict)
    events: list[tuple[int | None, str, str]] = field(default_factory=list)


def add_state(state: AdapterState, delta: AdapterState, scale: float = 1.0) -> AdapterState:
    """``state + scale * delta`` key by key (a new dict)."""
    return {k: state[k] + scale * delta[k].to(state[k].dtype) for k in state}


class Scheme(ABC):
    """A federated scheme. The runner calls :meth:`run_round` for rounds 1..R and checkpoints between.

    A scheme's whole progress lives in the dict returned by :meth:`initial_state` / :meth:`run_round`,
    so a run resumed from a checkpoint continues exactly where it stopped.
    """

    name = "base"

    def __init__(self, world: World, engine: Engine, aggregator: Aggregator, reporter: Reporter | None = None):
        self.world = world
        self.engine = engine
        self.aggregator = aggregator
        self.reporter = reporter or NullReporter()

    @abstractmethod
    def initial_state(self) -> dict[str, Any]:
        """The scheme's state before round 1 (tensors and plain values only)."""

    @abstractmethod
    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        """Advance one round; return the new state and what to record."""

    def initial_record(self, state: dict[str, Any]) -> RoundRecord:
        """Round 0: the untrained adapter evaluated like any round, as the baseline of every curve."""
        record = RoundRecord()
        g = state["global"]
        self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g)
        return record

    def final_adapters(self, state: dict[str, Any]) -> dict[str, AdapterState]:
        """Adapters to export at the end, by name (``global``, ``cluster_0``...)."""
        return {"global": state["global"]}

    # -- shared steps --------------------------------------------------------------------------------
    def sample_clients(self, round_idx: int, candidates: Sequence[int], k: int) -> list[int]:
        """``k`` clients drawn uniformly without replacement, deterministic per (seed, round)."""
        rng = np.random.default_rng(derive_seed(self.world.cfg.federation.seed, round_idx, 11))
        if k >= len(candidates):
            return sorted(candidates)
        return sorted(rng.choice(list(candidates), size=k, replace=False).tolist())

    def screen(
        self, results: Sequence[Update | ClientFailure], reference: AdapterState, record: RoundRecord,
        expected_version: int | None = None,
    ) -> list[Update]:
        """Validate every result; record accepted and rejected clients; return the accepted updates."""
        accepted = []
        down = state_nbytes(reference)
        max_norm = self.world.cfg.federation.max_update_norm
        for res in results:
            if isinstance(res, ClientFailure):
                record.events.append((res.client_id, "failed", res.reason))
                record.clients[res.client_id] = {"accepted": 0.0, "bytes_down": float(down)}
                continue
            row = {
                "train_loss": res.train_loss, "num_samples": float(res.num_samples), "bytes_up": float(res.nbytes),
                "bytes_down": float(down), "tokens": float(res.tokens), "flops": res.flops, "steps": float(res.steps),
            }
            try:
                validate_update(res, reference, max_norm=max_norm, expected_version=expected_version)
            except UpdateRejected as err:
                log.warning("rejected update: %s", err)
                record.events.append((res.client_id, "rejected", str(err)))
                row["accepted"] = 0.0
                row["train_loss"] = row["train_loss"] if np.isfinite(row["train_loss"]) else float("nan")
            else:
                row["accepted"] = 1.0
                accepted.append(res)
            record.clients[res.client_id] = row
        record.metrics["clients_accepted"] = float(len(accepted))
        record.metrics["clients_rejected"] = float(len(results) - len(accepted))
        if accepted:
            record.metrics["train_loss"] = float(np.mean([u.train_loss for u in accepted]))
        record.metrics["bytes_up"] = float(sum(u.nbytes for u in accepted))
        record.metrics["bytes_down"] = float(down * len(results))
        return accepted

    def should_evaluate(self, round_idx: int) -> bool:
        cfg = self.world.cfg
        return round_idx % cfg.eval.every == 0 or round_idx == cfg.federation.rounds

    def evaluate_into(self, record: RoundRecord, state_for_client: dict[int, AdapterState], global_state: AdapterState | None) -> None:
        """Global, per-domain and per-client evaluation of the current adapter(s)."""
        w = self.world
        if global_state is not None:
            for k, v in w.evaluate(global_state, w.data.global_eval).items():
                record.metrics[f"eval_{k}"] = v
            for dom, data in w.data.domain_eval.items():
                for k, v in w.evaluate(global_state, data).items():
                    record.metrics[f"eval_{k}/{dom}"] = v
        if w.cfg.eval.per_client:
            losses, accs = [], []
            for cid, state in state_for_client.items():
                client = w.data.clients[cid]
                if len(client.eval) == 0:
                    continue
                m = w.evaluate(state, client.eval)
                record.clients.setdefault(cid, {}).update({f"eval_{k}": v for k, v in m.items()})
                losses.append(m["loss"])
                if "accuracy" in m:
                    accs.append(m["accuracy"])
            if losses:
                record.metrics["client_eval_loss"] = float(np.mean(losses))
            if accs:
                record.metrics["client_eval_accuracy"] = float(np.mean(accs))
