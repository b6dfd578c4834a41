"""What every scheme shares: client selection, the network clock, screening updates, evaluation."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedintel.aggregation.base import Aggregator, RoundContext
from fedintel.aggregation.validate import ClaimLimits, UpdateRejected, check_claims, validate_update
from fedintel.engines.base import Engine
from fedintel.network.report import summarize_round
from fedintel.network.simulator import ClientJob
from fedintel.optimizers.builtin import build_optimizer
from fedintel.tracking.progress import NullReporter, Reporter
from fedintel.training.flops import train_flops
from fedintel.types import AdapterState, ClientFailure, EvalJob, EvalResult, TrainJob, Update, state_nbytes
from fedintel.world import World, derive_seed

log = logging.getLogger(__name__)

Result = Update | ClientFailure


@dataclass
class RoundRecord:
    """What one round produced, ready for the metrics store."""

    metrics: dict[str, float] = field(default_factory=dict)
    clients: dict[int, dict[str, float]] = field(default_factory=dict)
    events: list[tuple[int | None, str, str]] = field(default_factory=list)
    aggregations: list[dict[int, int]] = field(default_factory=list)
    """Per aggregation: client id -> how many of its updates it combined (a DP release each)."""
    uploads: Counter[int] = field(default_factory=Counter)
    """Updates each client sent this round (under local DP, each is a release)."""


def add_state(state: AdapterState, delta: AdapterState, scale: float = 1.0) -> AdapterState:
    """``state + scale * delta`` key by key (a new dict)."""
    return {k: state[k] + scale * delta[k].to(state[k].dtype) for k in state}


def new_totals() -> dict[str, float]:
    """Cumulative counters a scheme keeps in its state (so resumed runs continue them)."""
    return {"sim_time_s": 0.0, "bytes_up": 0.0, "bytes_down": 0.0, "energy_j": 0.0, "bytes_cloud": 0.0}


class Scheme(ABC):
    """A federated scheme. The runner calls :meth:`run_round` for rounds 1..R and checkpoints between.

    A scheme's whole progress lives in the dict returned by :meth:`initial_state` / :meth:`run_round`
    (tensors and plain values only), so a run resumed from a checkpoint continues exactly where it stopped.
    """

    name = "base"

    contributions: list[dict[str, Any]] | None = None
    """With ``output.save_client_updates`` a list: :meth:`aggregate` appends each aggregation's reference,
    inputs and result, which the runner saves per round for approximate unlearning (``fedintel forget``)."""

    def __init__(self, world: World, engine: Engine, aggregator: Aggregator, reporter: Reporter | None = None):
        self.world = world
        self.engine = engine
        self.aggregator = aggregator
        self.reporter = reporter or NullReporter()
        self.optimizer = build_optimizer(world.cfg.optimizer)
        """The federated optimizer (``optimizer:``): its state lives in the scheme state, one per aggregation node."""

    @abstractmethod
    def initial_state(self) -> dict[str, Any]:
        """The scheme's state before round 1."""

    @abstractmethod
    def run_round(self, round_idx: int, state: dict[str, Any]) -> tuple[dict[str, Any], RoundRecord]:
        """Advance one round; return the new state and what to record."""

    def final_adapters(self, state: dict[str, Any]) -> dict[str, AdapterState]:
        """Adapters to export at the end, by name (``global``, ``cluster_0``...)."""
        return {"global": state["global"]}

    def client_adapters(self, state: dict[str, Any]) -> dict[int, str]:
        """The exported adapter each client serves with at inference (a name of :meth:`final_adapters`)."""
        return {c.client_id: "global" for c in self.world.data.clients}

    def initial_record(self, state: dict[str, Any]) -> RoundRecord:
        """Round 0: the untrained adapter evaluated like any round, the baseline of every curve."""
        record = RoundRecord()
        g = self.world.initial_state
        self.evaluate_into(record, {c.client_id: g for c in self.world.data.clients}, g, round_idx=0)
        self._totals_into(record, new_totals())
        record.metrics["cum_bytes_cloud"] = 0.0
        return record

    # -- who trains ----------------------------------------------------------------------------------
    def sample_clients(self, round_idx: int, candidates: Sequence[int], k: int) -> list[int]:
        """``k`` clients drawn uniformly without replacement, deterministic per (seed, round)."""
        rng = np.random.default_rng(derive_seed(self.world.cfg.federation.seed, round_idx, 11))
        if k >= len(candidates):
            return sorted(candidates)
        return sorted(rng.choice(list(candidates), size=k, replace=False).tolist())

    def choose_clients(self, round_idx: int, candidates: Sequence[int], k: int) -> list[int]:
        """Apply ``network.selection`` (random, fastest_k, deadline); random without a network.

        Opted-out clients (``federation.exclude_clients``) are removed after sampling, so every other
        client's schedule is the same as in a run where they took part.
        """
        excluded = set(self.world.cfg.federation.exclude_clients)
        return [c for c in self._select(round_idx, candidates, k) if c not in excluded]

    def _select(self, round_idx: int, candidates: Sequence[int], k: int) -> list[int]:
        net = self.world.network
        if net is None or net.cfg.selection == "random":
            return self.sample_clients(round_idx, candidates, k)
        rng = np.random.default_rng(derive_seed(self.world.cfg.federation.seed, round_idx, 11))
        init = self.world.initial_state
        return sorted(net.select(round_idx, list(candidates), k, rng, self.world.estimated_flops(), state_nbytes(init),
                                 analog=self.world.cfg.aggregation.analog_uplink(), entries_estimate=_entries(init)))

    def train(self, round_idx: int, jobs: list[TrainJob], record: RoundRecord | None = None) -> list[Result]:
        """Run ``jobs`` on the engine, reporting progress per client; self-reported values are checked
        (:meth:`check_claims`) before anything (clock, weights, metrics) uses them."""
        results = self.engine.train(
            jobs, on_done=lambda r: self.reporter.client_done(round_idx, r.client_id, getattr(r, "train_loss", float("nan")))
        )
        if record is not None:
            record.uploads.update(r.client_id for r in results if isinstance(r, Update))
        return [self.check_claims(r, record) for r in results]

    def claim_limits(self, client_id: int) -> ClaimLimits:
        """The most client ``client_id`` can truthfully report for one job (its shard as the server knows it)."""
        w = self.world
        n = len(w.data.clients[client_id].train)
        spec = w.local_spec()
        steps = spec.num_steps(max(n, 1))
        seq = w.cfg.data.max_length
        tokens = steps * min(spec.batch_size, max(n, 1)) * seq
        return ClaimLimits(max_samples=n, max_steps=steps, max_tokens=tokens,
                           max_flops=train_flops(w.shape, tokens, seq), dense_bytes=state_nbytes(w.initial_state))

    def check_claims(self, result: Result, record: RoundRecord | None = None) -> Result:
        """``result`` with its claimed samples capped to the client's shard, or a ``rejected``
        :class:`ClientFailure` if a self-reported value (loss, FLOPs, steps, tokens, bytes) is impossible."""
        if not isinstance(result, Update):
            return result
        try:
            result, note = check_claims(result, self.claim_limits(result.client_id))
        except UpdateRejected as err:
            log.warning("rejected update: %s", err)
            return ClientFailure(result.client_id, str(err), kind="rejected")
        if note is not None:
            log.warning("%s", note)
            if record is not None:
                record.events.append((result.client_id, "capped", note))
        return result

    # -- the network clock ---------------------------------------------------------------------------
    def apply_network(
        self, round_idx: int, totals: dict[str, float], results: Sequence[Result], record: RoundRecord,
        bytes_down: int, groups: Sequence[Sequence[int]] | None = None,
        slots: Sequence[Sequence[int]] | None = None,
    ) -> list[Result]:
        """Time a synchronous round on the simulated network; drop late or faded clients.

        ``groups`` splits the clients into cells that each have the whole band (edge servers of the
        hierarchical scheme); the round ends when the slowest cell is done. When the aggregation rule sums
        over the air (``aggregation.analog_uplink()``), each cell's upload is one analog slot, or one per
        group of ``slots`` (clients aggregated apart, e.g. clusters). Updates ``totals`` (simulated time, bytes,
        energy) and returns the results that arrived.
        """
        analog = self.world.cfg.aggregation.analog_uplink()
        net = self.world.network
        updates = [r for r in results if isinstance(r, Update)]
        if net is None:
            totals["bytes_up"] += sum(u.nbytes for u in updates)
            totals["bytes_down"] += bytes_down * len(results)
            self._totals_into(record, totals)
            return list(results)
        start = totals["sim_time_s"]
        cells = [list(g) for g in groups] if groups is not None else [[u.client_id for u in updates]]
        end, dropped, summaries = start, set(), []
        for cell in cells:
            jobs = [ClientJob(u.client_id, u.flops, u.nbytes, bytes_down, _entries(u.delta))
                    for u in updates if u.client_id in cell]
            if not jobs:
                continue
            if analog is None:
                rt = net.simulate_round(round_idx, start, jobs)
            else:
                ids = {j.client_id for j in jobs}
                cell_slots = None if slots is None else [[c for c in g if c in ids] for g in slots]
                rt = net.simulate_round(round_idx, start, jobs, analog=analog,
                                        slots=None if cell_slots is None else [g for g in cell_slots if g])
            end = max(end, rt.end_s)
            dropped |= set(rt.dropped)
            summaries.append(summarize_round(rt))
            for cid, t in rt.clients.items():
                record.clients.setdefault(cid, {}).update(
                    sim_compute_s=t.compute_s, sim_upload_s=t.upload_s, sim_download_s=t.download_s,
                    energy_tx_j=t.energy_tx_j, energy_compute_j=t.energy_compute_j, rate_up_bps=t.rate_up_bps,
                    bandwidth_up_hz=t.bandwidth_up_hz, dropped=float(t.dropped),
                )
                if analog is not None:
                    record.clients[cid].update(tx_power_w=t.tx_power_w, truncated=float(t.truncated))
                if t.dropped:
                    record.events.append((cid, "dropped", f"{t.reason} (simulated network)"))
        sums = {k: sum(s[k] for s in summaries) for k in summaries[0]} if summaries else {}
        for key in ("dropped", "dropped_outage", "dropped_deadline", "energy_tx_j", "energy_compute_j"):
            record.metrics[key] = float(sums.get(key, 0.0))
        for key in ("max_compute_s", "max_upload_s"):
            record.metrics[key] = max((s[key] for s in summaries), default=0.0)
        record.metrics["sim_round_s"] = end - start
        totals["sim_time_s"] = end
        totals["bytes_up"] += sums.get("bytes_up", 0.0)
        totals["bytes_down"] += sums.get("bytes_down", 0.0)
        totals["energy_j"] += sums.get("energy_tx_j", 0.0) + sums.get("energy_compute_j", 0.0)
        self._totals_into(record, totals)
        return [r for r in results if r.client_id not in dropped]

    @staticmethod
    def _totals_into(record: RoundRecord, totals: dict[str, float]) -> None:
        record.metrics["sim_time_s"] = totals["sim_time_s"]
        record.metrics["cum_bytes_up"] = totals["bytes_up"]
        record.metrics["cum_bytes_down"] = totals["bytes_down"]
        record.metrics["cum_energy_j"] = totals["energy_j"]

    # -- what arrives --------------------------------------------------------------------------------
    def screen(
        self, results: Sequence[Result], reference: AdapterState, record: RoundRecord,
        expected_version: int | Mapping[int, int] | None = None, bytes_down: int | None = None,
    ) -> list[Update]:
        """Validate every result; record accepted and rejected clients; return the accepted updates.

        ``expected_version``: the global version every client trained from, or one per client id.
        ``bytes_down`` is what each client downloaded (default: the size of ``reference``).
        """
        accepted = []
        down = state_nbytes(reference) if bytes_down is None else bytes_down
        max_norm = self.world.cfg.federation.max_update_norm
        for res in results:
            row = record.clients.setdefault(res.client_id, {})
            if isinstance(res, ClientFailure):
                record.events.append((res.client_id, res.kind, res.reason))
                row.update(accepted=0.0, bytes_down=float(down))
                continue
            row.update(
                train_loss=res.train_loss, num_samples=float(res.num_samples), bytes_up=float(res.nbytes),
                bytes_down=float(down), tokens=float(res.tokens), flops=res.flops, steps=float(res.steps),
            )
            try:
                version = (expected_version.get(res.client_id) if isinstance(expected_version, Mapping)
                           else expected_version)
                validate_update(res, reference, max_norm=max_norm, expected_version=version)
            except UpdateRejected as err:
                log.warning("rejected update: %s", err)
                record.events.append((res.client_id, "rejected", str(err)))
                row["accepted"] = 0.0
            else:
                row["accepted"] = 1.0
                accepted.append(res)
        record.metrics["clients_accepted"] = float(len(accepted))
        record.metrics["clients_rejected"] = float(len(results) - len(accepted))
        if accepted:
            record.metrics["train_loss"] = float(np.mean([u.train_loss for u in accepted]))
        record.metrics["bytes_up"] = float(sum(u.nbytes for u in accepted))
        return accepted

    def aggregate(
        self, round_idx: int, updates: Sequence[Update], reference: AdapterState, record: RoundRecord,
        dropped: Sequence[int] = (),
    ) -> AdapterState:
        """The aggregator's delta for ``updates``, with its diagnostics recorded."""
        net = self.world.network
        ctx = RoundContext(round_idx, list(dropped), channel=net.channel(round_idx) if net is not None else None)
        delta = self.aggregator.aggregate(updates, reference, ctx)
        record.aggregations.append(dict(Counter(u.client_id for u in updates)))
        record.metrics.update(ctx.stats)
        if self.contributions is not None:  # output.save_client_updates (approximate unlearning)
            self.contributions.append({"reference": reference, "updates": list(updates), "delta": delta})
        return delta

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate_clients(self, jobs: list[EvalJob], record: RoundRecord | None = None) -> dict[int, EvalResult]:
        """Run ``jobs`` on the engine, where the clients' data lives; each failed job is logged and recorded as an
        ``eval_failed`` event (in ``record``) and left out of the result, keyed by client id."""
        out = {}
        for res in self.engine.evaluate(jobs) if jobs else []:
            if isinstance(res, EvalResult):
                out[res.client_id] = res
                continue
            log.warning("client %d could not evaluate: %s", res.client_id, res.reason)
            if record is not None:
                record.events.append((res.client_id, "eval_failed", res.reason))
        return out

    def should_evaluate(self, round_idx: int) -> bool:
        cfg = self.world.cfg
        return round_idx % cfg.eval.every == 0 or round_idx == cfg.federation.rounds

    def evaluate_into(
        self, record: RoundRecord, state_for_client: dict[int, AdapterState], global_state: AdapterState | None,
        domain_states: dict[str, AdapterState] | None = None, prefix: str = "", *, round_idx: int,
    ) -> None:
        """Global, per-domain and per-client evaluation of the current adapter(s) after round ``round_idx``.

        ``domain_states`` evaluates each domain's held-out set with its own adapter (clustered schemes);
        ``eval_loss_domain_mean`` averages the per-domain losses so schemes compare on equal terms. The
        held-out sets are the server's; each client's own eval split is evaluated where it lives, through
        the engine's evaluation jobs (``eval.per_client``).
        """
        w = self.world
        if global_state is not None:
            for k, v in w.evaluate(global_state, w.data.global_eval).items():
                record.metrics[f"{prefix}eval_{k}"] = v
        dom_losses = []
        by_state: dict[int, tuple[AdapterState, list[str]]] = {}  # domains sharing an adapter share batches
        for dom in w.data.domain_eval:
            state = (domain_states or {}).get(dom, global_state)
            if state is not None:
                by_state.setdefault(id(state), (state, []))[1].append(dom)
        results: dict[str, dict[str, float]] = {}
        for state, doms in by_state.values():
            results.update(w.evaluate_sets(state, {d: w.data.domain_eval[d] for d in doms}))
        for dom in w.data.domain_eval:
            for k, v in results.get(dom, {}).items():
                record.metrics[f"{prefix}eval_{k}/{dom}"] = v
                if k == "loss":
                    dom_losses.append(v)
        if dom_losses:
            record.metrics[f"{prefix}eval_loss_domain_mean"] = float(np.mean(dom_losses))
        if w.cfg.eval.per_client:
            losses, accs = [], []
            jobs = [EvalJob(cid, [state], round_idx) for cid, state in state_for_client.items()
                    if len(w.data.clients[cid].eval) > 0]
            for cid, res in self.evaluate_clients(jobs, record).items():
                m = res.metrics[0]
                record.clients.setdefault(cid, {}).update({f"{prefix}eval_{k}": v for k, v in m.items()})
                losses.append(m["loss"])
                if "accuracy" in m:
                    accs.append(m["accuracy"])
            if losses:
                record.metrics[f"{prefix}client_eval_loss"] = float(np.mean(losses))
            if accs:
                record.metrics[f"{prefix}client_eval_accuracy"] = float(np.mean(accs))


def _entries(state: AdapterState) -> int:
    """Values in an adapter state: what an over-the-air upload sends, one analog symbol each."""
    return sum(t.numel() for t in state.values())
