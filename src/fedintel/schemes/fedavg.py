"""Synchronous federated averaging of adapters (FL-LoRA, FL-P-Tuning, FL-Prompt-Tuning in the paper)."""

from __future__ import annotations

from typing import Any

from fedintel.engines.base import TrainJob
from fedintel.schemes.base import RoundRecord, Scheme, add_state


class FedAvgScheme(Scheme):
    """Each round: sample clients, train them from the global adapter, validate, aggregate, evaluate."""

    name = "fedavg"

    def initial_state(self) -> dict[str, Any]:
        return {"global": self.world.initial_state, "version": 0}

    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        fed = self.world.cfg.federation
        record = RoundRecord()
        chosen = self.sample_clients(round_idx, range(fed.num_clients), fed.clients_per_round)
        jobs = [TrainJob(cid, state["global"], state["version"], round_idx) for cid in chosen]
        results = self.engine.train(
            jobs, on_done=lambda r: self.reporter.client_done(round_idx, r.client_id, getattr(r, "train_loss", float("nan")))
        )
        accepted = self.screen(results, state["global"], record, expected_version=state["version"])
        new_state = dict(state)
        if accepted:
            delta = self.aggregator.aggregate(accepted, state["global"])
            new_state["global"] = add_state(state["global"], delta)
            new_state["version"] = state["version"] + 1
        else:
            record.events.append((None, "no_updates", "no client update was accepted; the global adapter is unchanged"))
        if self.should_evaluate(round_idx):
            g = new_state["global"]
            self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g)
        return new_state, record
