"""Split-model inference: a transformer's layers as contiguous stages on a chain of devices.

The originating device sends token ids to the first stage; each stage runs its layers with its own KV
cache and passes the activation straight to the next stage; the last stage returns the greedy token (and,
if asked, the logits) back along the chain. A :class:`SplitPipeline` is an
:class:`~fedintel.inference.stage.IncrementalLM`, so greedy and speculative decoding run over it as over
a model in this process.

``SplitPipeline.launch`` starts the stages as processes on this machine (each with its own certificate of a
fresh CA, unless given one); ``SplitPipeline.connect`` joins stages already running anywhere (``python -m
fedintel.inference.worker --layers a:b --certs DIR --name stage0 --host 0.0.0.0``). Every hop is mutual TLS.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import torch

from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.protocol import (
    DEFAULT_TIMEOUT_S,
    Client,
    LinkSecurity,
    ProtocolError,
    RemoteError,
)
from fedintel.inference.stage import StepOutput

log = logging.getLogger(__name__)


class SplitError(RuntimeError):
    """The pipeline cannot run: a stage is unreachable, died, or the stages do not fit together."""


@dataclass
class StageInfo:
    """What a stage reports about itself."""

    address: str
    start: int
    end: int
    total: int
    pid: int
    hidden: int
    vocab: int
    max_context: int


@dataclass
class HopStats:
    """Per-step timing: wall time at the origin and compute time on each stage (seconds)."""

    wall_s: list[float] = field(default_factory=list)
    compute_s: list[list[float]] = field(default_factory=list)

    def overhead_s(self) -> list[float]:
        """Wall time minus the stages' compute time, per step: what the transport added."""
        return [w - sum(c) for w, c in zip(self.wall_s, self.compute_s, strict=True)]


def stage_bounds(cuts: list[int], total: int) -> list[tuple[int, int]]:
    """``[(0, c1), (c1, c2), ..., (ck, total)]`` from interior cut points; validated."""
    bounds = [0, *cuts, total]
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise SplitError(f"cut points {cuts} must be strictly increasing inside 1..{total - 1}")
    return list(zip(bounds, bounds[1:], strict=False))


class SplitPipeline:
    """A chain of stage devices that together hold one causal LM.

    ``names``, when known (launched stages), are the device names each stage's certificate must carry;
    otherwise each stage's certificate must be valid for the host of its address.
    """

    def __init__(self, addresses: list[str], security: LinkSecurity, timeout: float = DEFAULT_TIMEOUT_S,
                 group: WorkerGroup | None = None, names: list[str] | None = None) -> None:
        if not addresses:
            raise SplitError("a split pipeline needs at least one stage address")
        if names is not None and len(names) != len(addresses):
            raise SplitError(f"{len(names)} stage names for {len(addresses)} stage addresses")
        self.security = security
        self.timeout = timeout
        self.group = group
        self.addresses = list(addresses)
        self.names = names if names is not None and not security.insecure else None
        self.clients = [Client(a, security, timeout=timeout, server_name=self.names[i] if self.names else None)
                        for i, a in enumerate(addresses)]
        self.stats = HopStats()
        self.stages: list[StageInfo] = []
        try:
            self._configure()
        except BaseException:
            self.close()
            raise
        self.max_context = min(s.max_context for s in self.stages)
        self.vocab_size = self.stages[-1].vocab

    # ------------------------------------------------------------------ set-up
    @classmethod
    def connect(cls, addresses: list[str], security: LinkSecurity, timeout: float = DEFAULT_TIMEOUT_S,
                names: list[str] | None = None) -> SplitPipeline:
        """Join stages already running at ``addresses`` (in pipeline order)."""
        return cls(addresses, security, timeout, names=names)

    @classmethod
    def launch(cls, model: str, cuts: list[int], total_layers: int, num_layers: int | None = None,
               security: LinkSecurity | None = None, threads: int = 1, timeout: float = DEFAULT_TIMEOUT_S,
               start_timeout: float = 120.0, extra_args: list[str] | None = None) -> SplitPipeline:
        """Start one process per stage on this machine (layers cut at ``cuts``) and connect them.

        ``security`` ``None``: a fresh CA for these stages (see :class:`WorkerGroup`)."""
        group = WorkerGroup(security, threads=threads, start_timeout=start_timeout)
        try:
            specs = []
            for i, (a, b) in enumerate(stage_bounds(cuts, total_layers)):
                args = ["--model", model, "--layers", f"{a}:{b}", *(extra_args or [])]
                if num_layers is not None:
                    args += ["--num-layers", str(num_layers)]
                specs.append((f"stage{i}", args))
            workers = group.start(specs)
            return cls([w.address for w in workers], group.security, timeout, group, [w.name for w in workers])
        except BaseException:
            group.close()
            raise

    def _call(self, i: int, op: str, meta: dict | None = None, tensors: dict | None = None) -> object:
        try:
            return self.clients[i].request(op, meta, tensors)
        except RemoteError as err:
            raise SplitError(f"stage {i} ({self.addresses[i]}) failed: {err}") from None
        except ProtocolError as err:
            raise SplitError(f"stage {i} ({self.addresses[i]}) is unreachable or died: {err}") from None

    def _configure(self) -> None:
        infos = []
        for i in range(len(self.clients)):
            m = self._call(i, "ping").meta  # type: ignore[attr-defined]
            if m.get("role") != "lm":
                raise SplitError(f"stage {i} ({self.addresses[i]}) serves a {m.get('role')}, not a language model")
            infos.append(StageInfo(self.addresses[i], m["start"], m["end"], m["total"], m["pid"], m["hidden"],
                                   m["vocab"], m["max_context"]))
        expect = 0
        for i, s in enumerate(infos):
            if s.start != expect:
                raise SplitError(f"stage {i} ({s.address}) holds layers {s.start}:{s.end}, expected it to start at "
                                 f"layer {expect}: the stages must cover the model contiguously, in order")
            if s.total != infos[0].total or s.hidden != infos[0].hidden:
                raise SplitError(f"stage {i} ({s.address}) runs a different model ({s.total} layers, hidden "
                                 f"{s.hidden}) than stage 0 ({infos[0].total}, {infos[0].hidden})")
            expect = s.end
        if expect != infos[0].total:
            raise SplitError(f"the stages cover layers 0:{expect} of {infos[0].total}: the last stage is missing")
        for i in range(len(infos)):
            nxt = self.addresses[i + 1] if i + 1 < len(infos) else None
            nxt_name = self.names[i + 1] if nxt and self.names else None
            self._call(i, "configure", {"next": nxt, "next_name": nxt_name})
        self.stages = infos

    # ------------------------------------------------------------------ IncrementalLM
    def open_session(self) -> str:
        """A new session id (each stage creates its cache on the first forward)."""
        return uuid.uuid4().hex

    def step(self, session: str, ids: torch.Tensor, pos: int, n_logits: int = 1,
             want_logits: bool = False) -> StepOutput:
        """Run new tokens through every stage; greedy tokens (and logits) of the last ``n_logits``."""
        if pos + ids.shape[1] > self.max_context:
            raise SplitError(f"{pos + ids.shape[1]} tokens exceed the model's context of {self.max_context}")
        t0 = time.perf_counter()
        reply = self._call(0, "forward", {"session": session, "pos": pos, "n_logits": n_logits,
                                          "want_logits": want_logits}, {"input_ids": ids.to(torch.int64)})
        wall = time.perf_counter() - t0
        self.stats.wall_s.append(wall)
        self.stats.compute_s.append([float(x) for x in reply.meta.get("timing", [])])  # type: ignore[attr-defined]
        t = reply.tensors  # type: ignore[attr-defined]
        return StepOutput(t["argmax"], t.get("logits"), wall)

    def truncate(self, session: str, length: int) -> None:
        """Drop cached positions ``>= length`` on every stage."""
        self._call(0, "truncate", {"session": session, "length": length})

    def close_session(self, session: str) -> None:
        """Free the session on every stage (best effort)."""
        try:
            self.clients[0].request("end", {"session": session}, timeout=5.0)
        except (ProtocolError, RemoteError):
            pass

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Disconnect; stop the processes this pipeline started."""
        for c in self.clients:
            c.close()
        if self.group is not None:
            self.group.close()
            self.group = None

    def __enter__(self) -> SplitPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
