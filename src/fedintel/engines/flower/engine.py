"""The Flower engine: fedintel's schemes drive clients that train on Flower SuperNodes.

:class:`FlowerEngine` is a normal :class:`~fedintel.engines.base.Engine`, built inside the ServerApp from
the ``Grid`` Flower hands it. A scheme calls :meth:`FlowerEngine.train` exactly as it calls the local
engine; each job becomes one message to the SuperNode that hosts the job's client, and the replies come
back as :class:`~fedintel.types.Update` in job order. A node that errors, is reported unavailable by the
SuperLink, or sends nothing within ``job_timeout`` seconds yields a
:class:`~fedintel.engines.base.ClientFailure`, and the round goes on without it.

:meth:`FlowerEngine.evaluate` does the same for :class:`~fedintel.types.EvalJob` (per-client evaluation,
IFCA's cluster pick): each job becomes one ``evaluate`` message to the node holding the client's data, which
scores the adapters on its shard and sends back only numbers, checked before use
(:func:`~fedintel.engines.flower.messages.eval_result_from_reply`).

Asynchronous schemes use the lower-level pair instead of :meth:`train`::

    handle = engine.submit(job)                  # returns at once; the job is on its way
    for handle, result in engine.poll(timeout=1.0):   # results that arrived (or timed out), any order
        ...                                      # result: Update | ClientFailure; handle.job is the job

``poll(handles, timeout)`` waits up to ``timeout`` seconds for at least one result among ``handles``
(default: every outstanding handle) and returns all that are ready; ``engine.outstanding`` counts jobs
still in flight. Replies are pulled from the SuperLink every ``poll_interval`` seconds (50 ms), not
Flower's default 3 s.

Which node hosts which client is learnt by discovery: the engine sends a ``query`` message to every
online node and each answers with the client ids in its node config (see
:mod:`fedintel.engines.flower.client_app`). The first :meth:`train` waits up to ``discovery_timeout``
seconds for all clients to be hosted; later calls pick up nodes that join (or come back) without waiting.
A node that timed out is *lost*: its clients fail at once in later rounds instead of waiting again, until
the node answers a new discovery query (re-sent every ``reprobe_interval`` seconds while it is online).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedintel.engines.base import Engine
from fedintel.engines.flower import messages as m
from fedintel.engines.flower.secagg import MASKED_RECORD, SECAGG_KEY, SecAggCoordinator
from fedintel.engines.flower.shards import partition_key
from fedintel.training.client import TrainingDiverged
from fedintel.trust import build_client_mods
from fedintel.types import MASKED_KEY, AdapterState, ClientFailure, EvalJob, EvalResult, TrainJob, Update
from fedintel.world import World

log = logging.getLogger(__name__)

Result = Update | ClientFailure


@dataclass
class JobHandle:
    """One submitted job: where it went and until when its reply is awaited."""

    job: TrainJob | EvalJob
    seq: int
    node_id: int | None = None
    message_id: str | None = None
    submitted_at: float = 0.0
    deadline: float = float("inf")


@dataclass
class EngineStats:
    """What crossed the Grid, for benchmarks and logs (payload bytes as Flower counts them)."""

    jobs: int = 0
    evals: int = 0
    """Evaluation jobs sent (``jobs`` counts training jobs)."""
    replies: int = 0
    failures: int = 0
    bytes_down: int = 0
    """``ArrayRecord`` bytes of the job messages (adapter tensors as .npy, keys included)."""
    bytes_up: int = 0
    """``ArrayRecord`` bytes of the replies (adapter deltas)."""
    pulls: int = 0
    node_seconds: list[float] = field(default_factory=list)
    """Per reply: seconds from push to reply as seen by the server."""


class NodeDirectory:
    """Which SuperNode hosts which client, learnt from ``query`` (discovery) messages.

    Create it as early as possible (the ServerApp does so before building the world) and call
    :meth:`probe`: the nodes start answering while the server is still loading its model.
    """

    def __init__(self, grid: Grid, partition_key: str, *, reprobe_interval: float = 10.0,
                 hello_ttl: float = 120.0) -> None:
        self.grid = grid
        self.partition_key = partition_key
        self.reprobe_interval = float(reprobe_interval)
        self.hello_ttl = float(hello_ttl)
        self.hosts: dict[int, int] = {}
        """client id -> node id."""
        self.lost: dict[int, str] = {}
        """node id -> why it is considered lost."""
        self.errors: dict[int, str] = {}
        """node id -> why discovery could not use it (no data dir, other partition...)."""
        self.asking: dict[str, int] = {}
        """message id of an unanswered query -> node id."""
        self._probed: dict[int, float] = {}
        self._lost_at: dict[int, float] = {}
        self._last_scan = 0.0

    def probe(self, force: bool = False) -> None:
        """Query nodes never asked (and lost nodes that are online again); at most once a second."""
        now = time.monotonic()
        if not force and now - self._last_scan < 1.0:
            return
        self._last_scan = now
        online = set(self.grid.get_node_ids())
        busy = set(self.asking.values())
        targets = [n for n in online if n not in self._probed and n not in busy]
        targets += [n for n in online if n in self.lost and n not in busy
                    and now - max(self._probed.get(n, 0.0), self._lost_at.get(n, 0.0)) > self.reprobe_interval]
        if not targets:
            return
        msgs = [Message(RecordDict(), n, m.HELLO, ttl=self.hello_ttl, group_id="discovery") for n in targets]
        for n, mid in zip(targets, self.grid.push_messages(msgs), strict=False):
            self._probed[n] = now
            if mid is not None:
                self.asking[mid] = n

    def mark_lost(self, node_id: int | None, reason: str) -> None:
        """Stop sending jobs to ``node_id`` until it answers a new query."""
        if node_id is not None and node_id not in self.lost:
            self.lost[node_id] = reason
            self._lost_at[node_id] = time.monotonic()
            log.warning("SuperNode %d is lost: %s", node_id, reason)

    def on_reply(self, message_id: str, reply: Message) -> None:
        """Record a node's answer to a query."""
        node_id = self.asking.pop(message_id)
        if reply.has_error():
            self.errors[node_id] = reply.error.reason
            return
        try:
            ids, key, error = m.read_hello(reply)
        except m.MessageError as err:
            self.errors[node_id] = str(err)
            return
        if error:
            self.errors[node_id] = error
        if ids and key != self.partition_key:
            self.errors[node_id] = (f"holds partition {key}, the experiment needs {self.partition_key}; "
                                    "re-run `fedintel deploy partition` and copy the shards")
            return
        self.lost.pop(node_id, None)
        for cid in ids:
            prev = self.hosts.get(cid)
            if prev is not None and prev != node_id and prev not in self.lost:
                log.warning("client %d is hosted by nodes %d and %d; keeping %d", cid, prev, node_id, prev)
                continue
            self.hosts[cid] = node_id


class FlowerEngine(Engine):
    """Run fedintel client jobs on Flower SuperNodes through a ServerApp's ``Grid``.

    ``job_timeout`` (seconds) bounds the wait for one job's reply; ``discovery_timeout`` (seconds) bounds
    the first wait for nodes to cover every client; ``poll_interval`` (seconds) is the pull period.
    """

    def __init__(
        self,
        grid: Grid,
        world: World,
        *,
        job_timeout: float = 600.0,
        discovery_timeout: float = 120.0,
        poll_interval: float = 0.05,
        reprobe_interval: float = 10.0,
        directory: NodeDirectory | None = None,
    ) -> None:
        self.grid = grid
        self.world = world
        self.job_timeout = float(job_timeout)
        self.discovery_timeout = float(discovery_timeout)
        self.poll_interval = float(poll_interval)
        self.experiment_json = json.dumps(world.cfg.model_dump(mode="json"))
        self.directory = directory or NodeDirectory(grid, partition_key(world.cfg), reprobe_interval=reprobe_interval)
        self.stats = EngineStats()
        self._seq = itertools.count()
        self._pending: dict[str, JobHandle] = {}
        self._done: dict[int, tuple[JobHandle, Result | EvalResult]] = {}
        self._fingerprints: dict[tuple[int, str], str] = {}
        self._discovered = False
        self.mods = build_client_mods(world.cfg)
        """The clients apply their mods on their nodes; the server reads them only for client steps it
        simulates itself (IFCA's cluster pick)."""
        self.secagg: SecAggCoordinator | None = None
        """Set under ``privacy.secure_aggregation``: every job's client masks its own update on its node."""
        p = world.cfg.privacy
        if p.secure_aggregation:
            from fedintel.config import ConfigError, _unsupported_combination

            problem = _unsupported_combination(world.cfg.model_copy(update={"engine": "flower"}))
            if problem:
                raise ConfigError(problem)
            self.secagg = SecAggCoordinator(self._exchange, frac_bits=p.secagg_frac_bits,
                                            threshold=p.secagg_threshold, timeout=self.job_timeout)

    @property
    def hosts(self) -> dict[int, int]:
        """client id -> id of the SuperNode that hosts it."""
        return self.directory.hosts

    # -- public API ---------------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Jobs submitted whose result has not been returned by :meth:`poll` yet."""
        return len(self._pending) + len(self._done)

    def train(self, jobs: list[TrainJob], on_done: Callable[[Result], None] | None = None) -> list[Result]:
        """Run ``jobs`` on their clients' nodes and return one result per job, in job order.

        Under secure aggregation the round's clients first run the key set-up (:mod:`.secagg`); a client
        that cannot take part fails, and the others upload masked updates (unmasked by :meth:`secure_sum`).
        """
        secagg: dict[int, Any] = {}
        if self.secagg is not None and jobs:
            self.discover(wait=not self._discovered)
            rounds = {j.round_idx for j in jobs}
            if len(rounds) != 1 or len({j.client_id for j in jobs}) != len(jobs):
                raise ValueError("secure aggregation on Flower runs one session per round: one job per client")
            session, failed = self.secagg.setup(rounds.pop(), [j.client_id for j in jobs])
            secagg = {"records": session.records if session else {}, "failed": failed}
        handles = self.submit_many(jobs, secagg)
        results: dict[int, Result] = {}
        while len(results) < len(handles):
            for h, r in self.poll(handles, timeout=1.0):
                results[h.seq] = r
                if on_done:
                    on_done(r)
        return [results[h.seq] for h in handles]

    def evaluate(self, jobs: list[EvalJob]) -> list[EvalResult | ClientFailure]:
        """Evaluate ``jobs`` on their clients' nodes (one push) and return one result per job, in job order."""
        self.discover(wait=not self._discovered)
        handles, to_push = [], []
        for job in jobs:
            h = JobHandle(job, next(self._seq))
            handles.append(h)
            nid = self._node_for(h)
            if nid is not None:
                h.node_id = nid
                content = m.eval_job_content(job, self.experiment_json, self._fingerprint(job.client_id, job.split))
                self.stats.bytes_down += sum(content[k].count_bytes() for k in content if k != m.JOB_KEY)
                to_push.append((h, Message(content, nid, m.EVALUATE, ttl=self.job_timeout + 60.0,
                                           group_id=f"eval-{job.round_idx}")))
        self._push(to_push)
        results: dict[int, EvalResult | ClientFailure] = {}
        while len(results) < len(handles):
            for h, r in self.poll(handles, timeout=1.0):
                results[h.seq] = r  # type: ignore[assignment]
        return [results[h.seq] for h in handles]

    def secure_sum(self, round_idx: int, updates: Sequence[Update], template: AdapterState) -> AdapterState:
        """The unmasked sum of ``updates`` (masked on their nodes in ``round_idx``), shaped like ``template``;
        every other participant of the round's session is dropped and its masks are recovered."""
        if self.secagg is None:
            raise RuntimeError("secure_sum needs privacy.secure_aggregation")
        words = {}
        for u in updates:
            if set(u.delta) != {MASKED_KEY} or u.client_id in words:
                raise ValueError(f"client {u.client_id}: not one masked update per client")
            words[u.client_id] = u.delta[MASKED_KEY].numpy().view(np.uint64)
        return self.secagg.unmask(round_idx, words, template)

    def submit(self, job: TrainJob) -> JobHandle:
        """Send one job to its client's node and return at once; collect the result with :meth:`poll`."""
        return self.submit_many([job])[0]

    def submit_many(self, jobs: Iterable[TrainJob], secagg: dict[str, Any] | None = None) -> list[JobHandle]:
        """Send several jobs in one push (the shared global adapter is uploaded to the SuperLink once).

        ``secagg`` (from :meth:`train`): each client's secure-aggregation record, and why others cannot train.
        """
        self.discover(wait=not self._discovered)
        if self.secagg is not None and not secagg:
            raise RuntimeError("under secure aggregation jobs go through train() (the round's key set-up)")
        records, refused = (secagg or {}).get("records", {}), (secagg or {}).get("failed", {})
        handles, to_push = [], []
        for job in jobs:
            h = JobHandle(job, next(self._seq))
            handles.append(h)
            if job.client_id in refused:
                self._fail(h, refused[job.client_id])
            elif self.secagg is not None and job.client_id not in records:
                self._fail(h, f"client {job.client_id} is not in the round's secure-aggregation session")
            elif (nid := self._node_for(h)) is not None:
                h.node_id = nid
                seed = job.seed(self.world.cfg.federation.seed)  # the seed LocalEngine trains this job with
                content = m.job_content(job, self.experiment_json, self._fingerprint(job.client_id), seed)
                if job.client_id in records:
                    content[SECAGG_KEY] = records[job.client_id]
                msg = Message(content, nid, m.TRAIN, ttl=self.job_timeout + 60.0, group_id=str(job.round_idx))
                self.stats.bytes_down += content[m.ADAPTER_KEY].count_bytes()
                to_push.append((h, msg))
        self._push(to_push)
        return handles

    def _node_for(self, h: JobHandle) -> int | None:
        """The node hosting ``h``'s client, or None after failing ``h`` (no host, or the host is lost)."""
        d, cid = self.directory, h.job.client_id
        nid = d.hosts.get(cid)
        if nid is None:
            why = "; ".join(f"node {n}: {e}" for n, e in d.errors.items())
            self._fail(h, f"no SuperNode hosts client {cid}" + (f" ({why})" if why else ""))
        elif nid in d.lost:
            self._fail(h, f"SuperNode {nid} (client {cid}) is lost: {d.lost[nid]}")
        else:
            return nid
        return None

    def _push(self, to_push: list[tuple[JobHandle, Message]]) -> None:
        """Send the messages of ``to_push`` in one push; a message the SuperLink refuses fails its job."""
        if not to_push:
            return
        now = time.monotonic()
        ids = list(self.grid.push_messages([msg for _, msg in to_push]))
        for (h, _), mid in itertools.zip_longest(to_push, ids[: len(to_push)]):
            if mid is None:
                self._fail(h, f"the SuperLink refused the job message for client {h.job.client_id}")
                continue
            h.message_id, h.submitted_at, h.deadline = mid, now, now + self.job_timeout
            self._pending[mid] = h
            if isinstance(h.job, EvalJob):
                self.stats.evals += 1
            else:
                self.stats.jobs += 1

    def poll(self, handles: Iterable[JobHandle] | None = None, timeout: float = 0.0) -> list[tuple[JobHandle, Result]]:
        """Results of ``handles`` (default: all) that are ready, waiting up to ``timeout`` s for the first."""
        wanted = None if handles is None else {h.seq for h in handles}
        end = time.monotonic() + timeout
        while True:
            self._collect()
            ready = [seq for seq in self._done if wanted is None or seq in wanted]
            if ready or time.monotonic() >= end:
                return [self._done.pop(seq) for seq in ready]
            time.sleep(self.poll_interval)

    def discover(self, wait: bool = False) -> dict[int, int]:
        """Learn which node hosts which client; with ``wait``, until all clients are hosted or the timeout."""
        clients = set(range(self.world.cfg.federation.num_clients))
        t0 = time.monotonic()
        end = t0 + (self.discovery_timeout if wait else 0.0)
        while True:
            self.directory.probe(force=wait)
            self._collect()
            if not wait or clients <= self.hosts.keys() or time.monotonic() >= end:
                break
            time.sleep(max(self.poll_interval, 0.2))
        if wait:
            self._discovered = True
            missing = sorted(clients - self.hosts.keys())
            log.info("Flower nodes after %.1f s (client: node): %s", time.monotonic() - t0,
                     {c: n for c, n in sorted(self.hosts.items())})
            if missing:
                log.warning("after %.0f s no SuperNode hosts clients %s; they fail until one joins",
                            self.discovery_timeout, missing)
        return dict(self.hosts)

    def close(self) -> None:
        """Nothing to release: the Grid belongs to Flower. Logs what crossed it."""
        log.info("Flower engine: %s", {k: v for k, v in vars(self.stats).items() if k != "node_seconds"})

    # -- internals ----------------------------------------------------------------------------------
    def _fingerprint(self, client_id: int, split: str = "train") -> str:
        """The fingerprint of a client's ``train`` or ``eval`` rows as partitioned (a node checks them before
        its data mods)."""
        key = (client_id, split)
        if key not in self._fingerprints:
            c = self.world.data.clients[client_id]
            rows = c.train if split == "train" else c.eval
            self._fingerprints[key] = m.shard_fingerprint(rows.input_ids, rows.labels)
        return self._fingerprints[key]

    def _fail(self, h: JobHandle, reason: str, kind: str = "failed") -> None:
        log.warning("client %d: %s", h.job.client_id, reason)
        self.stats.failures += 1
        self._done[h.seq] = (h, ClientFailure(h.job.client_id, reason, kind))

    def _collect(self) -> None:
        """Pull every reply that has arrived; resolve timed-out jobs."""
        ids = list(self._pending) + list(self.directory.asking)
        if ids:
            self.stats.pulls += 1
            for reply in self.grid.pull_messages(ids):
                rid = reply.metadata.reply_to_message_id
                if rid in self.directory.asking:
                    self.directory.on_reply(rid, reply)
                elif rid in self._pending:
                    self._on_reply(self._pending.pop(rid), reply)
        now = time.monotonic()
        for mid, h in list(self._pending.items()):
            if now >= h.deadline:
                del self._pending[mid]
                reason = f"no reply within {self.job_timeout:g} s (round {h.job.round_idx})"
                self.directory.mark_lost(h.node_id, reason)
                self._fail(h, f"SuperNode {h.node_id}: {reason}")

    def _on_reply(self, h: JobHandle, reply: Message) -> None:
        cid = h.job.client_id
        self.stats.replies += 1
        self.stats.node_seconds.append(time.monotonic() - h.submitted_at)
        if reply.has_error():
            if reply.error.code in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE):
                self.directory.mark_lost(h.node_id, reply.error.reason)
            self._fail(h, f"SuperNode {h.node_id}: {reply.error.reason}")
            return
        if isinstance(h.job, EvalJob):
            self._on_eval_reply(h, h.job, reply)
            return
        try:
            status, reason = m.outcome(reply)
            if status == "diverged":
                if self.world.cfg.federation.on_client_diverged == "stop":
                    raise TrainingDiverged(reason)
                self._fail(h, reason or f"client {cid} diverged", kind="diverged")
                return
            for key in (m.DELTA_KEY, MASKED_RECORD):
                if key in reply.content:
                    self.stats.bytes_up += reply.content[key].count_bytes()
            if self.secagg is not None and MASKED_RECORD not in reply.content:
                raise m.MessageError("under secure aggregation a node must upload a masked update, not a delta")
            update = m.update_from_reply(reply, cid)
        except TrainingDiverged:
            raise  # federation.on_client_diverged: stop
        except m.MessageError as err:
            self._fail(h, f"SuperNode {h.node_id}: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a reply must never kill the ServerApp
            self._fail(h, f"SuperNode {h.node_id}: malformed reply ({type(err).__name__}: {err})")
            return
        log.info("client %d on node %d: %.1f s round trip (node: setup %.1f s, train %.1f s)", cid, h.node_id,
                 self.stats.node_seconds[-1], update.metrics.get("node_setup_s", float("nan")),
                 update.metrics.get("node_train_s", float("nan")))
        self._done[h.seq] = (h, update)

    def _on_eval_reply(self, h: JobHandle, job: EvalJob, reply: Message) -> None:
        try:
            for key in reply.content:
                if key.startswith(m.EVAL_METRICS_PREFIX):
                    self.stats.bytes_up += reply.content[key].count_bytes()
            result = m.eval_result_from_reply(reply, job)
        except m.MessageError as err:
            self._fail(h, f"SuperNode {h.node_id}: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a reply must never kill the ServerApp
            self._fail(h, f"SuperNode {h.node_id}: malformed evaluation reply ({type(err).__name__}: {err})")
            return
        self._done[h.seq] = (h, result)

    def _exchange(self, msgs: dict[int, tuple[str, RecordDict]], timeout: float) -> dict[int, Message | str]:
        """Send each client's message to its node; wait up to ``timeout`` s for every reply (see
        :data:`.secagg.Exchange`). A node that does not answer in time is marked lost, as for a train job."""
        out: dict[int, Message | str] = {}
        d = self.directory
        waiting: dict[str, int] = {}
        to_push: list[tuple[int, Message]] = []
        for cid, (mtype, content) in msgs.items():
            nid = d.hosts.get(cid)
            if nid is None:
                out[cid] = f"no SuperNode hosts client {cid}"
                continue
            if nid in d.lost:
                out[cid] = f"SuperNode {nid} (client {cid}) is lost: {d.lost[nid]}"
                continue
            to_push.append((cid, Message(content, nid, mtype, ttl=timeout + 60.0, group_id=mtype)))
        if to_push:
            ids = list(self.grid.push_messages([msg for _, msg in to_push]))
            for (cid, _), mid in itertools.zip_longest(to_push, ids[: len(to_push)]):
                if mid is None:
                    out[cid] = f"the SuperLink refused the message for client {cid}"
                else:
                    waiting[mid] = cid
        end = time.monotonic() + timeout
        while waiting:
            for reply in self.grid.pull_messages(list(waiting) + list(d.asking)):
                rid = reply.metadata.reply_to_message_id
                if rid in d.asking:
                    d.on_reply(rid, reply)
                elif rid in waiting:
                    cid = waiting.pop(rid)
                    if reply.has_error() and reply.error.code in (ErrorCode.NODE_UNAVAILABLE,
                                                                  ErrorCode.REPLY_MESSAGE_UNAVAILABLE):
                        d.mark_lost(d.hosts.get(cid), reply.error.reason)
                    out[cid] = reply
            if not waiting or time.monotonic() >= end:
                break
            time.sleep(self.poll_interval)
        for cid in waiting.values():
            reason = f"no reply within {timeout:g} s (secure aggregation)"
            d.mark_lost(d.hosts.get(cid), reason)
            out[cid] = f"SuperNode {d.hosts.get(cid)}: {reason}"
        return out


def engine_options(run_config: dict[str, Any]) -> dict[str, float]:
    """:class:`FlowerEngine` keyword arguments from a Flower run config (``job-timeout``...)."""
    keys = {"job-timeout": "job_timeout", "discovery-timeout": "discovery_timeout", "poll-interval": "poll_interval"}
    return {arg: float(run_config[k]) for k, arg in keys.items() if k in run_config}
