"""Asynchronous federated fine-tuning on the wall clock, over Flower's push/pull.

fedintel's :class:`~fedintel.schemes.asynchronous.AsyncScheme` orders arrivals on the *simulated* clock (the
network model), so a run is deterministic and gives the local engine's numbers on Flower too, but it asks
the engine for one job at a time. :class:`WallClockAsyncScheme` is the deployment variant: it keeps
``async.concurrency`` jobs in flight on the SuperNodes (:meth:`FlowerEngine.submit`), applies each reply the
moment it arrives (:meth:`FlowerEngine.poll`, every 50 ms) with the same FedAsync/FedBuff rules and staleness
weights, and immediately sends new work to the client that just answered (or another eligible one).

What differs from the simulated-clock scheme, by design:

- the arrival order (and with it the numbers) depends on real timing, so runs are not bit-reproducible;
- ``network`` timings and energy are not simulated (the wall clock is the clock): ``sim_time_s`` stays 0 and
  ``wall_clock_s`` is reported instead;
- jobs in flight at a checkpoint are not saved: a resumed run re-dispatches them.

Select it in the experiment file with ``engine: flower``, ``federation.scheme: async`` and
``async.clock: wall`` (:func:`fedintel.experiment.scheme_class`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fedintel.schemes.asynchronous import AsyncScheme
from fedintel.schemes.base import RoundRecord
from fedintel.seeding import derive_seed
from fedintel.types import ClientFailure, TrainJob, Update


class WallClockAsyncScheme(AsyncScheme):
    """FedAsync / FedBuff where replies are merged in the order they arrive (needs ``engine.submit/poll``)."""

    name = "async-wallclock"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not (hasattr(self.engine, "submit") and hasattr(self.engine, "poll")):
            raise TypeError(f"{type(self.engine).__name__} has no submit/poll; use the Flower engine")
        self._flying: dict[int, dict[str, Any]] = {}  # handle seq -> {"base": adapter, "client_id": ...}
        self._arrived: list[tuple[Any, Any]] = []  # polled but not merged yet (the round's quota was reached)
        self._t0 = time.monotonic()

    def _fill_now(self, state: dict[str, Any]) -> None:
        while len(self._flying) < self.concurrency:
            eligible = self._eligible(state, {j["client_id"] for j in self._flying.values()})
            if not eligible:
                return
            rng = np.random.default_rng(derive_seed(self.world.cfg.federation.seed, state["dispatches"], 23))
            cid = int(rng.choice(eligible))
            version = state["version"]
            key = f"{cid}:{version}"
            salt = state["salt"].get(key, 0)
            state["salt"][key] = salt + 1
            state["dispatches"] += 1
            state["last_version"][cid] = version
            handle = self.engine.submit(TrainJob(cid, state["global"], version, version + 1, salt))  # type: ignore[attr-defined]
            self._flying[handle.seq] = {"client_id": cid, "base": state["global"], "base_version": version}

    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        cfg = self.world.cfg
        a = cfg.asynchronous
        per_round = a.arrivals_per_round or cfg.federation.clients_per_round
        record = RoundRecord()
        state = {**state, "in_flight": [], "buffer": list(state["buffer"]), "last_version": list(state["last_version"]),
                 "salt": dict(state["salt"])}
        accepted = stale = rejected = 0
        staleness_seen, losses = [], []
        self._fill_now(state)
        while state["arrivals"] < round_idx * per_round:
            if not self._arrived:
                if not self._flying:
                    record.events.append((None, "idle", "no client can train (all ineligible)"))
                    break
                self._arrived.extend(self.engine.poll(timeout=1.0))  # type: ignore[attr-defined]
                continue
            handle, result = self._arrived.pop(0)
            job = self._flying.pop(handle.seq)
            state["arrivals"] += 1
            cid = job["client_id"]
            if isinstance(result, Update):
                record.uploads[cid] += 1
            result = self.check_claims(result, record)
            if isinstance(result, ClientFailure):
                record.events.append((cid, result.kind, result.reason))
            else:
                update: Update = result
                outcome = self.arrive(round_idx, state, job, update, record)
                if outcome == "stale":
                    stale += 1
                elif outcome == "rejected":
                    rejected += 1
                else:
                    accepted += 1
                    staleness_seen.append(int(record.clients[cid]["staleness"]))
                    losses.append(update.train_loss)
            self._fill_now(state)
        m = record.metrics
        m.update(clients_accepted=float(accepted), clients_rejected=float(rejected), dropped_stale=float(stale),
                 version=float(state["version"]), wall_clock_s=time.monotonic() - self._t0)
        if losses:
            m["train_loss"] = float(np.mean(losses))
            m["mean_staleness"] = float(np.mean(staleness_seen))
            m["max_staleness"] = float(np.max(staleness_seen))
        if self.should_evaluate(round_idx):
            g = state["global"]
            self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g, round_idx=round_idx)
        return state, record
