"""Continuous batching over one device path: requests join and leave the batch between decode steps.

One scheduler thread per :class:`~fedintel.serving.backends.DevicePath`. Each turn it

1. admits waiting requests while the batch has room (``max_batch``): the ones waiting together are prefilled
   in one forward (each as it would be alone), which gives their first tokens (time to first token does not
   wait for the batch to drain);
2. drops rows that finished (length, end-of-sequence) or whose client left, freeing their caches;
3. runs one batched decode step over every active row (one forward per stage for the whole batch).

``max_batch: 1`` serves requests one at a time (the baseline that batching is measured against).

When the path fails (a device died or stopped answering), the scheduler hands its requests, with the tokens
they already have, to ``on_failure`` (the service fails them over to another path serving the same model,
which continues greedily from those tokens, or answers 503) and stops.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedintel.serving.backends import DevicePath, PathDown, PathRefused

log = logging.getLogger(__name__)


@dataclass
class Usage:
    """Where one request's time went (seconds) and on which devices."""

    path: str = ""
    path_kind: str = ""
    devices: list[str] = field(default_factory=list)
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stage_compute_s: list[float] = field(default_factory=list)
    stall_s: float = 0.0  # in the batch, waiting while newcomers were prefilled
    steps: int = 0
    batch_sum: int = 0
    failovers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # what a speculative or cascade path adds

    def add_stages(self, stage_s: list[float]) -> None:
        if len(self.stage_compute_s) != len(stage_s):
            self.stage_compute_s = [0.0] * len(stage_s)
        self.stage_compute_s = [a + b for a, b in zip(self.stage_compute_s, stage_s, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the ``fedintel`` field of a response)."""
        compute = sum(self.stage_compute_s)
        return {
            "path": self.path, "path_kind": self.path_kind, "devices": self.devices, "queue_s": round(self.queue_s, 6),
            "prefill_s": round(self.prefill_s, 6), "decode_s": round(self.decode_s, 6),
            "stall_s": round(self.stall_s, 6),
            "stage_compute_s": [round(x, 6) for x in self.stage_compute_s],
            "transport_s": round(max(0.0, self.prefill_s + self.decode_s - compute), 6),
            "decode_steps": self.steps, "mean_batch": round(self.batch_sum / self.steps, 3) if self.steps else 0.0,
            "failovers": self.failovers, **self.extra,
        }


Emit = Callable[[str, Any], None]
"""``emit(kind, value)``: ``("token", id)``, ``("done", finish_reason)`` or ``("error", (status, message))``;
called from the scheduler thread."""


@dataclass
class GenRequest:
    """One generation: prompt tokens, the budget, and where its tokens go."""

    prompt_ids: list[int]
    max_tokens: int
    eos_ids: frozenset[int]
    emit: Emit
    model_id: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    generated: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    finished: bool = False
    session: str = ""

    def cancel(self) -> None:
        """The client left: drop the request at the next step boundary."""
        self.cancelled.set()

    def _finish(self, kind: str, value: Any) -> None:
        if not self.finished:
            self.finished = True
            self.emit(kind, value)


class Scheduler:
    """The batching loop of one path (a daemon thread)."""

    _ids = itertools.count()

    def __init__(self, path: DevicePath, max_batch: int,
                 on_failure: Callable[[Scheduler, list[GenRequest], str], None], batch_prefill: bool = True) -> None:
        self.path = path
        self.max_batch = max_batch
        self.batch_prefill = batch_prefill
        self.ending: list[str] = []  # sessions that finished, freed on the devices with the next decode step
        self.on_failure = on_failure
        self.pending: deque[GenRequest] = deque()
        self.active: list[GenRequest] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.down: str | None = None
        self.steps = 0  # decode steps, the rows they decoded, and their wall time (seconds): see /health
        self.rows_decoded = 0
        self.decode_s = 0.0
        self.prefills = 0  # prefills and their wall time (seconds)
        self.prefill_s = 0.0
        self.thread = threading.Thread(target=self._loop, name=f"scheduler-{path.name}", daemon=True)
        self.thread.start()

    @property
    def load(self) -> int:
        """Requests waiting or being decoded."""
        return len(self.pending) + len(self.active)

    @property
    def up(self) -> bool:
        return self.down is None and not self.stopped and self.path.alive()

    def submit(self, req: GenRequest) -> None:
        """Queue ``req``; it joins the batch at the next step boundary."""
        with self.cond:
            if self.down is not None or self.stopped:
                raise PathDown(f"path {self.path.name} is down: {self.down or 'stopped'}")
            req.usage.path, req.usage.devices = self.path.name, self.path.device_names
            req.usage.path_kind = self.path.spec.kind
            self.pending.append(req)
            self.cond.notify()

    def mark_down(self, reason: str) -> None:
        """A device of the path died while the loop was idle: fail over what is queued and stop."""
        with self.cond:
            if self.down is None:
                self.down = reason
            self.cond.notify()

    def close(self) -> None:
        """Stop the loop (requests still held are failed over by the caller's ``on_failure``)."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=30)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and self.down is None and not self.pending and not self.active:
                    self.cond.wait(0.5)
                down = self.down
                if self.stopped:
                    held = list(self.active) + list(self.pending)
                    self.active, self.pending = [], deque()
                    break
            if down is not None:
                self._fail(down)
                return
            try:
                self._turn()
            except PathDown as err:
                self._fail(str(err))
                return
            except Exception as err:  # a bug must not leave requests hanging
                log.exception("scheduler of %s failed", self.path.name)
                self._fail(f"{type(err).__name__}: {err}")
                return
        for r in held:
            r._finish("error", (503, f"the service is stopping (path {self.path.name})"))

    def _fail(self, reason: str) -> None:
        with self.cond:
            self.down = self.down or reason
            held = [r for r in list(self.active) + list(self.pending) if not r.finished]
            self.active, self.pending = [], deque()
        log.warning("path %s is down: %s (%d requests to fail over)", self.path.name, reason, len(held))
        for r in held:
            r.session = ""
        self.on_failure(self, held, reason)

    def _turn(self) -> None:
        self._admit()
        self._retire()
        if not self.active:
            return
        rows = list(self.active)
        end, self.ending = self.ending, []
        try:
            res = self.path.decode([r.session for r in rows], [r.generated[-1] for r in rows], end)
        except PathRefused as err:  # a device lost our state (should not happen): start the rows over
            log.warning("decode on %s refused (%s): re-prefilling %d rows", self.path.name, err, len(rows))
            self.path.reset()
            with self.cond:
                self.active = []
                self.pending.extendleft(reversed(rows))
            return
        self.steps += 1
        self.rows_decoded += len(rows)
        self.decode_s += res.wall_s
        share = res.wall_s
        for r, tok in zip(rows, res.tokens, strict=True):
            r.usage.decode_s += share
            r.usage.add_stages(res.stage_s)
            r.usage.steps += 1
            r.usage.batch_sum += len(rows)
            self._push(r, tok)
        self._retire()

    def _admit(self) -> None:
        """Prefill waiting requests into the batch while it has room: the ones that arrived together in one
        forward (``batch_prefill``), else (or when the path refuses the group) one at a time, so that a request
        the path refuses is answered with its own error and the others still start.

        A request leaves ``pending`` only once it is in ``active``: when its prefill fails because the path
        died, it is still queued, and :meth:`_fail` hands it over with every other request the path holds.
        (Taking several requests off the queue before prefilling them lost the rest when one prefill hit the
        dead device: neither the queue nor the batch held them any more, and their clients waited forever.)"""
        while len(self.active) < self.max_batch:
            with self.cond:  # only this thread takes requests off the queue: the head stays ours
                group = list(itertools.islice(self.pending, self.max_batch - len(self.active)))
            if not group:
                return
            live = [r for r in group if not r.cancelled.is_set()]
            t0 = time.perf_counter()
            firsts = self._prefill_group(live) if self.batch_prefill and len(live) > 1 else None
            if firsts is None:
                firsts = [self._prefill(r) for r in live]
            stalled = time.perf_counter() - t0
            for r in self.active:  # the batch waited for these prefills
                r.usage.stall_s += stalled
            started = dict(zip((id(r) for r in live), firsts, strict=True))
            with self.cond:
                for _ in group:
                    self.pending.popleft()
                for r in group:
                    if started.get(id(r)) is not None:
                        self.active.append(r)
            for r in group:
                first = started.get(id(r))
                if first is not None:
                    self._push(r, first)
                elif r.cancelled.is_set():
                    r._finish("done", "cancelled")

    def _prefill_group(self, reqs: list[GenRequest]) -> list[int | None] | None:
        """Start ``reqs`` in one forward: each one's next token, or None when the path refused the group (the
        devices undid it; the caller then starts them one at a time)."""
        self._open_sessions(reqs)
        try:
            res = self.path.prefill_many([r.session for r in reqs], [r.prompt_ids + r.generated for r in reqs])
        except PathRefused as err:
            log.info("group prefill of %d requests on %s refused (%s): one at a time", len(reqs), self.path.name, err)
            for r in reqs:
                r.session = ""
            return None
        self._count_prefill(reqs, res)
        return list(res.tokens)

    def _prefill(self, req: GenRequest) -> int | None:
        """Start ``req`` alone (from its prompt plus any tokens it already has, after a failover): its next
        token, or None when a device refused it (the request is answered with the refusal)."""
        self._open_sessions([req])
        try:
            res = self.path.prefill(req.session, req.prompt_ids + req.generated)
        except PathRefused as err:
            req.session = ""
            req._finish("error", (400, str(err)))
            return None
        self._count_prefill([req], res)
        return res.tokens[0]

    def _open_sessions(self, reqs: list[GenRequest]) -> None:
        """A fresh device session per request (a failed-over request gets a new one); a request's queueing time
        ends at its first prefill."""
        for r in reqs:
            r.session = f"{r.id}-{next(self._ids)}"
            if not r.generated and not r.usage.prefill_s:
                r.usage.queue_s = time.perf_counter() - r.submitted

    def _count_prefill(self, reqs: list[GenRequest], res: Any) -> None:
        """Charge a prefill's wall time and stage compute to each request it started, and to /health."""
        for r in reqs:
            r.usage.prefill_s += res.wall_s
            r.usage.add_stages(res.stage_s)
        self.prefills += len(reqs)
        self.prefill_s += res.wall_s

    def _push(self, req: GenRequest, tok: int) -> None:
        end = self._append(req, tok)
        if end is not None:
            req._finish("done", end)

    @staticmethod
    def _append(req: GenRequest, tok: int) -> str | None:
        """Stream ``tok`` to ``req``; the finish reason it reached (``stop``, ``length``) or None."""
        if req.finished or req.cancelled.is_set():
            return None
        req.generated.append(tok)
        req.emit("token", tok)
        if tok in req.eos_ids:
            return "stop"
        if len(req.generated) >= req.max_tokens:
            return "length"
        return None

    def _retire(self) -> None:
        gone = [r for r in self.active if r.finished or r.cancelled.is_set()]
        if not gone:
            return
        self.active = [r for r in self.active if r not in gone]
        for r in gone:
            r._finish("done", "cancelled")  # no-op for finished ones
        # freed with the next decode step (one round trip and one restack fewer), or now if none follows
        self.ending += [r.session for r in gone if r.session]
        if not self.active:
            self.path.end(self.ending)
            self.ending = []
