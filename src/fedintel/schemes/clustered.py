"""Clustered federated fine-tuning (CFL-LoRA): clients grouped by similarity, one adapter per cluster.

Clusters form from the data partition's domains (``given``), from the cosine similarity of the clients'
first updates (``similarity``, after Sattler et al., "Clustered Federated Learning", IEEE TNNLS 2020),
by IFCA (Ghosh et al., NeurIPS 2020: each client picks the cluster adapter with the lowest loss on its
own data, every round), or by device capability or latency (the paper, section III-A). Each cluster is
aggregated from its own members only; optional cross-cluster sharing mixes clusters together.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from fedintel.aggregation.fedavg import weighted_mean
from fedintel.schemes.base import RoundRecord, Scheme, new_totals
from fedintel.schemes.cluster_methods import build_clustering_method, purity
from fedintel.seeding import derive_seed
from fedintel.types import AdapterState, EvalJob, TrainJob, Update, state_nbytes


class ClusteredScheme(Scheme):
    """K cluster adapters; each round every selected client trains its cluster's adapter."""

    name = "clustered"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.method = build_clustering_method(self.world.cfg.clustering)

    def initial_state(self) -> dict[str, Any]:
        c = self.world.cfg.clustering
        init = self.world.initial_state
        clusters = [init for _ in range(c.num_clusters)]
        if self.method.picks_each_round:
            # IFCA needs distinct starting points; LoRA's B=0 would make every cluster identical.
            gen = torch.Generator().manual_seed(derive_seed(self.world.cfg.federation.seed, 17))
            clusters = [init] + [
                {key: t + 1e-3 * torch.randn(t.shape, generator=gen, dtype=t.dtype) for key, t in init.items()}
                for _ in range(c.num_clusters - 1)
            ]
        return {
            "clusters": clusters,
            "assignment": self.method.initial_assignment(self.world),
            "versions": [0] * c.num_clusters,
            "totals": new_totals(),
            "optimizer": [self.optimizer.init_state(cl) for cl in clusters],  # one federated-optimizer state per cluster
        }

    # -- a round -------------------------------------------------------------------------------------
    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        cfg = self.world.cfg
        fed = cfg.federation
        record = RoundRecord()
        state = {**state, "totals": dict(state["totals"]), "assignment": list(state["assignment"]),
                 "clusters": list(state["clusters"]), "versions": list(state["versions"]),
                 "optimizer": list(state.get("optimizer") or [{} for _ in state["clusters"]])}
        forming = self.method.forms_from_updates and min(state["assignment"]) < 0
        if forming:  # every client trains once from the shared start so all can be clustered
            chosen = [c for c in range(fed.num_clients) if c not in set(fed.exclude_clients)]
        else:
            chosen = self.choose_clients(round_idx, range(fed.num_clients), fed.clients_per_round)
        if self.method.picks_each_round:
            self._ifca_pick(round_idx, chosen, state, record)
        start = {cid: state["clusters"][max(state["assignment"][cid], 0)] for cid in chosen}
        version = {cid: state["versions"][max(state["assignment"][cid], 0)] for cid in chosen}
        opt = {cid: state["optimizer"][max(state["assignment"][cid], 0)] for cid in chosen}
        results = self.train(round_idx, [TrainJob(cid, start[cid], version[cid], round_idx,
                                                  extras=self.optimizer.downlink(opt[cid], cid)) for cid in chosen],
                             record)
        down = state_nbytes(self.world.initial_state) + self.optimizer.downlink_nbytes(state["optimizer"][0])
        # over the air each cluster is summed in its own slot; a client not yet clustered sends alone
        by_cluster: dict[int, list[int]] = {}
        for cid in chosen:
            k = state["assignment"][cid]
            by_cluster.setdefault(k if k >= 0 else -1 - cid, []).append(cid)
        arrived = self.apply_network(round_idx, state["totals"], results, record, down,
                                     slots=[by_cluster[k] for k in sorted(by_cluster)])
        accepted = self.screen(arrived, self.world.initial_state, record, expected_version=version, bytes_down=down)
        if forming:
            labels = self.method.form([u.delta for u in accepted], derive_seed(fed.seed, 19))
            for u, label in zip(accepted, labels, strict=True):
                state["assignment"][u.client_id] = label
            record.events.append((None, "clustered", f"similarity clusters: {state['assignment']}"))
        self._aggregate_clusters(round_idx, state, accepted, record)
        self._share(round_idx, state)
        state["totals"]["bytes_cloud"] += sum(u.nbytes for u in accepted)
        record.metrics["cum_bytes_cloud"] = state["totals"]["bytes_cloud"]
        self._record_assignment(state["assignment"], record)
        if self.should_evaluate(round_idx):
            self._evaluate(round_idx, state, record)
        return state, record

    def _aggregate_clusters(self, round_idx: int, state: dict[str, Any], accepted: list[Update], record: RoundRecord) -> None:
        by_cluster: dict[int, list[Update]] = {}
        for u in accepted:
            by_cluster.setdefault(state["assignment"][u.client_id], []).append(u)
        for k, members in sorted(by_cluster.items()):
            if k < 0:
                continue
            ref = state["clusters"][k]
            size = sum(a == k for a in state["assignment"])
            state["clusters"][k], state["optimizer"][k] = self.optimizer.step(
                ref, self.aggregate(round_idx, members, ref, record), state["optimizer"][k], members, size)
            state["versions"][k] += 1
            record.metrics[f"cluster_size/{k}"] = float(size)

    def _share(self, round_idx: int, state: dict[str, Any]) -> None:
        c = self.world.cfg.clustering
        clusters = state["clusters"]
        if len(clusters) < 2:
            return
        if c.shared_keys:
            mean = weighted_mean(clusters, [1.0] * len(clusters))
            shared = [k for k in mean if any(s in k for s in c.shared_keys)]
            clusters[:] = [{**cl, **{k: mean[k] for k in shared}} for cl in clusters]
        if c.share_beta > 0 and round_idx % c.share_every == 0:
            mean = weighted_mean(clusters, [1.0] * len(clusters))
            clusters[:] = [{k: (1 - c.share_beta) * cl[k] + c.share_beta * mean[k] for k in cl} for cl in clusters]

    def _ifca_pick(self, round_idx: int, chosen: list[int], state: dict[str, Any], record: RoundRecord) -> None:
        """Each of ``chosen`` takes the cluster whose adapter has the lowest loss on a few of its own training
        batches, scored where its data lives (an evaluation job); a client that cannot score keeps its cluster."""
        jobs = [EvalJob(cid, state["clusters"], round_idx, split="train", measure="pick_loss") for cid in chosen]
        for cid, res in self.evaluate_clients(jobs, record).items():
            state["assignment"][cid] = int(np.argmin([m["loss"] for m in res.metrics]))

    def _record_assignment(self, assignment: list[int], record: RoundRecord) -> None:
        for cid, k in enumerate(assignment):
            record.clients.setdefault(cid, {})["cluster"] = float(k)
        truth = self.world.data.client_domains
        if any(t is not None for t in truth) and min(assignment) >= 0:
            record.metrics["cluster_purity"] = purity(assignment, truth)

    def domain_clusters(self, assignment: list[int]) -> dict[str, int]:
        """Each known domain's cluster: the one most of that domain's clients belong to."""
        out = {}
        for dom in self.world.data.domain_eval:
            votes = Counter(a for a, d in zip(assignment, self.world.data.client_domains, strict=True) if d == dom and a >= 0)
            if votes:
                out[dom] = votes.most_common(1)[0][0]
        return out

    def _evaluate(self, round_idx: int, state: dict[str, Any], record: RoundRecord) -> None:
        clusters, assignment = state["clusters"], state["assignment"]
        per_client = {c.client_id: clusters[max(assignment[c.client_id], 0)] for c in self.world.data.clients}
        dom = {d: clusters[k] for d, k in self.domain_clusters(assignment).items()}
        if dom:
            self.evaluate_into(record, per_client, None, domain_states=dom, round_idx=round_idx)
            self._domain_means_as_global(record)
        else:  # no domains known: evaluate the largest cluster's adapter on the global set
            biggest = Counter(a for a in assignment if a >= 0).most_common(1)
            self.evaluate_into(record, per_client, clusters[biggest[0][0] if biggest else 0], round_idx=round_idx)

    def _domain_means_as_global(self, record: RoundRecord) -> None:
        # With one adapter per cluster there is no single global model: the headline eval metrics are the
        # means over the domains' held-out sets, each evaluated with its domain's cluster adapter.
        m = record.metrics
        m["eval_loss"] = m.get("eval_loss_domain_mean", float("nan"))
        if self.world.task == "causal_lm":
            m["eval_perplexity"] = float(np.exp(min(m["eval_loss"], 50.0)))
        accs = [v for k, v in m.items() if k.startswith("eval_accuracy/")]
        if accs:
            m["eval_accuracy"] = float(np.mean(accs))

    def initial_record(self, state: dict[str, Any]) -> RoundRecord:
        record = super().initial_record(state)
        if "eval_loss_domain_mean" in record.metrics:
            self._domain_means_as_global(record)
        return record

    def final_adapters(self, state: dict[str, Any]) -> dict[str, AdapterState]:
        return {f"cluster_{k}": s for k, s in enumerate(state["clusters"])}

    def client_adapters(self, state: dict[str, Any]) -> dict[int, str]:
        # A client not yet assigned (-1: opted out before clustering) serves with cluster 0, as it is evaluated.
        return {cid: f"cluster_{max(k, 0)}" for cid, k in enumerate(state["assignment"])}
