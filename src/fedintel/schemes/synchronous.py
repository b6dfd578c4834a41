"""Synchronous federated averaging of adapters (FL-LoRA, FL-P-Tuning, FL-Prompt-Tuning in the paper).

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from typing import Any

from fedintel.schemes.base import RoundRecord, Scheme, new_totals
from fedintel.types import TrainJob, state_nbytes


class FedAvgScheme(Scheme):
    """Each round: select clients, train them from the global adapter, time the round on the network,
    validate, aggregate, evaluate."""

    name = "fedavg"

    def initial_state(self) -> dict[str, Any]:
        init = self.world.initial_state
        return {"global": init, "version": 0, "totals": new_totals(), "optimizer": self.optimizer.init_state(init)}

    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        fed = self.world.cfg.federation
        record = RoundRecord()
        state = {**state, "totals": dict(state["totals"])}
        g, opt = state["global"], state.get("optimizer", {})  # checkpoints before federated optimizers lack it
        chosen = self.choose_clients(round_idx, range(fed.num_clients), fed.clients_per_round)
        jobs = [TrainJob(cid, g, state["version"], round_idx, extras=self.optimizer.downlink(opt, cid)) for cid in chosen]
        results = self.train(round_idx, jobs, record)
        down = state_nbytes(g) + self.optimizer.downlink_nbytes(opt)
        arrived = self.apply_network(round_idx, state["totals"], results, record, down)
        accepted = self.screen(arrived, g, record, expected_version=state["version"], bytes_down=down)
        # flat FL: the aggregation server is in the cloud, so every accepted update travels there
        state["totals"]["bytes_cloud"] += sum(u.nbytes for u in accepted)
        record.metrics["cum_bytes_cloud"] = state["totals"]["bytes_cloud"]
        if accepted:
            dropped = sorted(set(chosen) - {u.client_id for u in accepted})
            delta = self.aggregate(round_idx, accepted, g, record, dropped)
            population = fed.num_clients - len(fed.exclude_clients)
            state["global"], state["optimizer"] = self.optimizer.step(g, delta, opt, accepted, population)
            state["version"] += 1
        else:
            record.events.append((None, "no_updates", "no client update was accepted; the global adapter is unchanged"))
        if self.should_evaluate(round_idx):
            g = state["global"]
            self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g, round_idx=round_idx)
        return state, record
