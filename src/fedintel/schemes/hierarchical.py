"""Hierarchical federated fine-tuning: client -> edge server -> (regional tiers) -> cloud.

HierFAVG (Liu et al., "Client-Edge-Cloud Hierarchical Federated Learning", ICC 2020) generalised to any
depth, the paper's multi-layer form (section III-B): edge servers aggregate their clients every round;
tier ``lvl`` aggregates its children every ``tiers[lvl].period`` rounds; the cloud aggregates the top tier every
``cloud_period`` (kappa) rounds and pushes the global adapter back down. Clients attach to the nearest edge
server of the network topology when ``network.edge_servers`` equals the edge tier's size, else round-robin.
Client-to-edge is wireless (one cell per edge server); edge-upwards uses the backhaul and cloud links.

A server-side federated optimizer (``optimizer:``, e.g. FedAdam) keeps one state per edge server, applied to
that edge's aggregated client delta every round, and one at the cloud, applied to the cloud's change (the
weighted mean of the top tier minus the previous global adapter). Intermediate tiers average plainly.
"""

from __future__ import annotations

from typing import Any

from fedintel.aggregation.fedavg import weighted_mean
from fedintel.schemes.base import RoundRecord, Scheme, new_totals
from fedintel.types import AdapterState, TrainJob, state_nbytes


class HierarchicalScheme(Scheme):
    """Edge aggregation every round, upper tiers and the cloud periodically."""

    name = "hierarchical"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        h = self.world.cfg.hierarchy
        n = self.world.cfg.federation.num_clients
        edges = h.tiers[0].nodes
        net = self.world.network
        if net is not None and net.cfg.edge_servers == edges:
            self.client_edge = [int(e) for e in net.client_edge]
        else:
            self.client_edge = [c % edges for c in range(n)]
        # parent[lvl][j]: the node of tier lvl+1 above node j of tier lvl (the cloud above the top tier)
        self.parent = [[j % h.tiers[lvl + 1].nodes for j in range(t.nodes)] for lvl, t in enumerate(h.tiers[:-1])]
        # weight of every node: clients below it (sample-count proxy, fixed for the run)
        self.weight: list[list[float]] = [[float(self.client_edge.count(j)) for j in range(edges)]]
        for lvl in range(1, len(h.tiers)):
            self.weight.append([
                sum(w for j, w in enumerate(self.weight[lvl - 1]) if self.parent[lvl - 1][j] == i) for i in range(h.tiers[lvl].nodes)
            ])

    def initial_state(self) -> dict[str, Any]:
        init = self.world.initial_state
        tiers = [[init] * t.nodes for t in self.world.cfg.hierarchy.tiers]
        opt = {"edges": [self.optimizer.init_state(init) for _ in tiers[0]], "cloud": self.optimizer.init_state(init)}
        return {"global": init, "tiers": tiers, "version": 0, "totals": new_totals(), "optimizer": opt}

    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        cfg = self.world.cfg
        h, fed = cfg.hierarchy, cfg.federation
        record = RoundRecord()
        tiers = [list(t) for t in state["tiers"]]
        opt = state.get("optimizer") or {"edges": [{} for _ in tiers[0]], "cloud": {}}
        opt = {"edges": list(opt["edges"]), "cloud": opt["cloud"]}
        state = {**state, "tiers": tiers, "totals": dict(state["totals"]), "optimizer": opt}
        totals = state["totals"]
        chosen = self.choose_clients(round_idx, range(fed.num_clients), fed.clients_per_round)
        jobs = [TrainJob(cid, tiers[0][self.client_edge[cid]], state["version"], round_idx) for cid in chosen]
        results = self.train(round_idx, jobs, record)
        nbytes = state_nbytes(state["global"])
        cells = [[c for c in chosen if self.client_edge[c] == e] for e in range(h.tiers[0].nodes)]
        arrived = self.apply_network(round_idx, totals, results, record, nbytes, groups=cells)
        accepted = self.screen(arrived, state["global"], record, expected_version=state["version"])
        # 1. every edge server aggregates its own clients
        for e in range(h.tiers[0].nodes):
            members = [u for u in accepted if self.client_edge[u.client_id] == e]
            if members:
                delta = self.aggregate(round_idx, members, tiers[0][e], record)
                tiers[0][e], opt["edges"][e] = self.optimizer.step(
                    tiers[0][e], delta, opt["edges"][e], members, self.client_edge.count(e))
        state["version"] += 1
        # 2. upper tiers, then the cloud, when their period comes
        link_s = 0.0
        for lvl in range(1, len(h.tiers)):
            if round_idx % h.tiers[lvl].period == 0:
                for i in range(h.tiers[lvl].nodes):
                    kids = [j for j in range(h.tiers[lvl - 1].nodes) if self.parent[lvl - 1][j] == i]
                    tiers[lvl][i] = self._merge([tiers[lvl - 1][j] for j in kids], [self.weight[lvl - 1][j] for j in kids])
                self._push_down(tiers, lvl)
                link_s += 2 * self._link_time(nbytes, lvl)  # children up, parent down
                totals["bytes_up"] += nbytes * h.tiers[lvl - 1].nodes
        if round_idx % h.cloud_period == 0:
            top = len(h.tiers) - 1
            merged = self._merge(tiers[top], self.weight[top])
            if self.optimizer.stateless:
                state["global"] = merged
            else:  # the cloud's optimizer takes the change of the global adapter as its delta
                prev = state["global"]
                change = {k: merged[k] - prev[k] for k in prev}
                state["global"], opt["cloud"] = self.optimizer.step(prev, change, opt["cloud"])
            tiers[top] = [state["global"]] * h.tiers[top].nodes
            self._push_down(tiers, top)
            totals["bytes_cloud"] += nbytes * h.tiers[top].nodes
            net = self.world.network
            link_s += 2 * (net.cloud_time(nbytes) if net is not None else 0.0)
            record.metrics["cloud_aggregated"] = 1.0
        if self.world.network is not None:
            totals["sim_time_s"] += link_s
            record.metrics["sim_time_s"] = totals["sim_time_s"]
            record.metrics["sim_round_s"] = record.metrics.get("sim_round_s", 0.0) + link_s
        record.metrics["cum_bytes_cloud"] = totals["bytes_cloud"]
        if self.should_evaluate(round_idx):
            self._evaluate(round_idx, state, record)
        return state, record

    def _link_time(self, nbytes: int, tier: int) -> float:
        net = self.world.network
        return net.backhaul_time(nbytes) if net is not None else 0.0

    @staticmethod
    def _merge(states: list[AdapterState], weights: list[float]) -> AdapterState:
        if sum(weights) <= 0:
            weights = [1.0] * len(states)
        return weighted_mean(states, weights)

    def _push_down(self, tiers: list[list[AdapterState]], level: int) -> None:
        """Children of every node at ``level`` (recursively) take the node's adapter."""
        for lvl in range(level, 0, -1):
            tiers[lvl - 1] = [tiers[lvl][self.parent[lvl - 1][j]] for j in range(len(tiers[lvl - 1]))]

    def _evaluate(self, round_idx: int, state: dict[str, Any], record: RoundRecord) -> None:
        g = state["global"]
        clients = self.world.data.clients
        if self.world.cfg.hierarchy.personalize:
            # personalised: each client with its edge server's adapter; generalisation: the cloud's
            edge = {c.client_id: state["tiers"][0][self.client_edge[c.client_id]] for c in clients}
            self.evaluate_into(record, edge, g, round_idx=round_idx)
            self.evaluate_into(record, {c.client_id: g for c in clients}, None, prefix="global_", round_idx=round_idx)
        else:
            self.evaluate_into(record, {c.client_id: g for c in clients}, g, round_idx=round_idx)

    def final_adapters(self, state: dict[str, Any]) -> dict[str, AdapterState]:
        out = {"global": state["global"]}
        out.update({f"edge_{e}": s for e, s in enumerate(state["tiers"][0])})
        return out

    def client_adapters(self, state: dict[str, Any]) -> dict[int, str]:
        # The personalised adapter of the client's edge server (``global`` is exported beside it).
        return {c.client_id: f"edge_{self.client_edge[c.client_id]}" for c in self.world.data.clients}
