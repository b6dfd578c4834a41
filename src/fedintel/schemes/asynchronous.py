"""Asynchronous federated fine-tuning on the simulated clock: FedAsync and FedBuff.

No round barrier: a client starts when it is free, downloads the current global adapter, trains, uploads;
the server applies each update when it arrives in simulated time.

* FedAsync (Xie et al., "Asynchronous Federated Optimization", 2019): ``w <- (1 - a_s) w + a_s w_client``
  with ``a_s = alpha * f(s)`` decaying in the staleness ``s`` (versions since the client's download):
  ``constant`` f=1, ``polynomial`` f=(1+s)^-a, ``hinge`` f=1 if s<=b else 1/(a(s-b)+1).
* FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022):
  buffer M arrivals, each delta scaled by f(s), then ``w <- w + server_lr * aggregate(buffer)``.

A server-side federated optimizer (``optimizer:``, e.g. FedAdam) takes each applied change as its delta: per
arrival in FedAsync (``a_s (w_client - w)``) and per buffer in FedBuff (``server_lr * aggregate(buffer)``).

Updates staler than ``max_staleness`` are dropped and reported. Training compute is real and happens when a
client is dispatched (its result depends only on the adapter it downloaded and its seed), so the event order
on the simulated clock, and with it the whole run, is deterministic for a seed. A scheme "round" is
``arrivals_per_round`` arrivals: the unit of evaluation and checkpointing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedintel.aggregation.validate import UpdateRejected, validate_update
from fedintel.network.clock import EventQueue
from fedintel.network.simulator import ClientJob
from fedintel.schemes.base import RoundRecord, Scheme, add_state, new_totals
from fedintel.seeding import derive_seed
from fedintel.types import ClientFailure, TrainJob, Update, state_nbytes

OUTAGE_RETRY_S = 1.0  # a client in a deep fade tries again this much later


def staleness_weight(s: int, kind: str, a: float, b: int) -> float:
    """f(s) of FedAsync: 1 at s=0, non-increasing in the staleness s."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + s) ** (-a))
    return 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0)


class AsyncScheme(Scheme):
    """Event-driven server: dispatch, arrive, mix (FedAsync) or buffer (FedBuff), dispatch again."""

    name = "async"

    @property
    def concurrency(self) -> int:
        cfg = self.world.cfg
        return min(cfg.asynchronous.concurrency or cfg.federation.clients_per_round, cfg.federation.num_clients)

    def initial_state(self) -> dict[str, Any]:
        return {
            "global": self.world.initial_state, "version": 0, "totals": new_totals(),
            "in_flight": [], "buffer": [], "last_version": [-1] * self.world.cfg.federation.num_clients,
            "dispatches": 0, "arrivals": 0, "salt": {}, "optimizer": self.optimizer.init_state(self.world.initial_state),
        }

    # -- dispatching ---------------------------------------------------------------------------------
    def _eligible(self, state: dict[str, Any], training: set[int] | None = None) -> list[int]:
        """Clients free to start now: not ``training`` (default: in flight on the clock), not excluded."""
        busy = {j["client_id"] for j in state["in_flight"]} if training is None else set(training)
        busy |= set(self.world.cfg.federation.exclude_clients)
        wait = self.world.cfg.asynchronous.wait_for_new_version
        return [c for c in range(self.world.cfg.federation.num_clients)
                if c not in busy and not (wait and state["last_version"][c] >= state["version"])]

    def _fill(self, state: dict[str, Any], now_s: float, record: RoundRecord) -> None:
        """Start clients until ``concurrency`` are training (or nobody is eligible)."""
        while len(state["in_flight"]) < self.concurrency:
            eligible = self._eligible(state)
            if not eligible:
                return
            rng = np.random.default_rng(derive_seed(self.world.cfg.federation.seed, state["dispatches"], 23))
            cid = int(rng.choice(eligible))
            self._dispatch(state, cid, now_s, record)

    def _dispatch(self, state: dict[str, Any], cid: int, now_s: float, record: RoundRecord) -> None:
        version = state["version"]
        key = f"{cid}:{version}"
        salt = state["salt"].get(key, 0)
        state["salt"][key] = salt + 1
        state["dispatches"] += 1
        state["last_version"][cid] = version
        job = TrainJob(cid, state["global"], version, version + 1, salt)
        result = self.engine.train([job])[0]
        if isinstance(result, Update):
            record.uploads[cid] += 1
        result = self.check_claims(result, record)
        self.reporter.client_done(state["arrivals"], cid, getattr(result, "train_loss", float("nan")))
        nbytes = state_nbytes(state["global"])
        entry: dict[str, Any] = {"client_id": cid, "base_version": version, "start_s": now_s, "base": state["global"]}
        if isinstance(result, ClientFailure):
            kind = "dropped" if result.kind == "failed" else result.kind  # this scheme's name for a failure
            entry.update(failed=result.reason, failed_kind=kind, finish_s=now_s + OUTAGE_RETRY_S)
        else:
            entry.update(update=dataclasses.asdict(result))
            net = self.world.network
            assert net is not None  # the config requires the network for async
            bw = net.cfg.bandwidth_hz / self.concurrency
            t = net.client_timing(state["dispatches"], now_s, ClientJob(cid, result.flops, result.nbytes, nbytes), bw)
            entry["finish_s"] = t.finish_s if not t.dropped else now_s + OUTAGE_RETRY_S
            entry["dropped"] = t.reason if t.dropped else ""
            entry["energy_j"] = t.energy_tx_j + t.energy_compute_j
            entry["bytes_down"] = float(t.bytes_down)
        state["in_flight"].append(entry)

    # -- a scheme round: arrivals_per_round arrivals ------------------------------------------------
    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        cfg = self.world.cfg
        a = cfg.asynchronous
        per_round = a.arrivals_per_round or cfg.federation.clients_per_round
        record = RoundRecord()
        state = {**state, "totals": dict(state["totals"]), "in_flight": list(state["in_flight"]),
                 "buffer": list(state["buffer"]), "last_version": list(state["last_version"]), "salt": dict(state["salt"])}
        totals = state["totals"]
        self._fill(state, totals["sim_time_s"], record)
        accepted = stale = rejected = 0
        staleness_seen, losses = [], []
        while state["arrivals"] < round_idx * per_round:
            if not state["in_flight"]:
                record.events.append((None, "idle", "no client can train (all ineligible)"))
                break
            queue = EventQueue()
            for i, job in enumerate(state["in_flight"]):
                queue.push(job["finish_s"], "upload_done", i)
            ev = queue.pop()
            job = state["in_flight"].pop(ev.payload)
            totals["sim_time_s"] = max(totals["sim_time_s"], ev.time_s)
            state["arrivals"] += 1
            cid = job["client_id"]
            record.clients.setdefault(cid, {})
            if job.get("failed"):
                record.events.append((cid, job.get("failed_kind", "dropped"), job["failed"]))
            elif job.get("dropped"):
                record.events.append((cid, "dropped", f"{job['dropped']} (simulated network)"))
            else:
                update = Update(**job["update"])
                totals["bytes_up"] += update.nbytes
                totals["bytes_down"] += job["bytes_down"]
                totals["energy_j"] += job["energy_j"]
                outcome = self.arrive(round_idx, state, job, update, record)
                if outcome == "stale":
                    stale += 1
                elif outcome == "rejected":
                    rejected += 1
                else:
                    accepted += 1
                    staleness_seen.append(int(record.clients[cid]["staleness"]))
                    losses.append(update.train_loss)
            self._fill(state, totals["sim_time_s"], record)
        m = record.metrics
        m.update(clients_accepted=float(accepted), clients_rejected=float(rejected), dropped_stale=float(stale),
                 version=float(state["version"]))
        if losses:
            m["train_loss"] = float(np.mean(losses))
            m["mean_staleness"] = float(np.mean(staleness_seen))
            m["max_staleness"] = float(np.max(staleness_seen))
        self._totals_into(record, totals)
        if self.should_evaluate(round_idx):
            g = state["global"]
            self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g, round_idx=round_idx)
        return state, record

    def arrive(self, round_idx: int, state: dict[str, Any], job: dict[str, Any], update: Update,
               record: RoundRecord) -> str:
        """Handle one arrival: drop it if too stale, validate it, then mix or buffer it.

        Returns ``"stale"``, ``"rejected"`` or ``"accepted"``; the events and the client's row are recorded.
        """
        a, cid = self.world.cfg.asynchronous, job["client_id"]
        s = state["version"] - job["base_version"]
        record.clients.setdefault(cid, {}).update(
            train_loss=update.train_loss, staleness=float(s), bytes_up=float(update.nbytes))
        if a.max_staleness is not None and s > a.max_staleness:
            record.events.append((cid, "stale", f"staleness {s} > async.max_staleness {a.max_staleness}"))
            return "stale"
        try:
            validate_update(update, state["global"], max_norm=self.world.cfg.federation.max_update_norm,
                            expected_version=job["base_version"])
        except UpdateRejected as err:
            record.events.append((cid, "rejected", str(err)))
            return "rejected"
        self._apply(round_idx, state, job, update, s, record)
        return "accepted"

    def _apply(self, round_idx: int, state: dict[str, Any], job: dict[str, Any], update: Update, s: int,
               record: RoundRecord) -> None:
        a = self.world.cfg.asynchronous
        f = staleness_weight(s, a.staleness, a.staleness_a, a.staleness_b)
        if a.mode == "fedasync":
            mix = a.alpha * f
            client_model = add_state(job["base"], update.delta)
            g = state["global"]
            if self.optimizer.stateless:
                state["global"] = {k: (1 - mix) * g[k] + mix * client_model[k] for k in g}
            else:
                change = {k: mix * (client_model[k] - g[k]) for k in g}
                state["global"], state["optimizer"] = self.optimizer.step(g, change, state["optimizer"], [update])
            state["version"] += 1
            return
        scaled = dataclasses.replace(update, delta={k: v * f for k, v in update.delta.items()} if f != 1.0 else update.delta)
        state["buffer"].append(dataclasses.asdict(scaled))
        if len(state["buffer"]) >= a.buffer_size:
            buffered = sorted((Update(**u) for u in state["buffer"]), key=lambda u: u.client_id)
            delta = self.aggregate(round_idx, buffered, state["global"], record)
            if self.optimizer.stateless:
                state["global"] = add_state(state["global"], delta, a.server_lr)
            else:
                change = {k: a.server_lr * v for k, v in delta.items()}
                state["global"], state["optimizer"] = self.optimizer.step(state["global"], change, state["optimizer"], buffered)
            state["version"] += 1
            state["buffer"] = []
