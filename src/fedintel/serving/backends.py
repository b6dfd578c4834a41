"""Device paths: chains of serving device processes that each hold one model (base or an adapter merged).

A :class:`DevicePath` is one process holding the whole model, or split stages (``cuts``), started on this
machine by a :class:`~fedintel.inference.launcher.WorkerGroup` (each process with its own certificate of the
service's CA; every link is mutual TLS unless the config says ``insecure``, loopback only). The front talks
to the first stage; stages pass activations down the chain, and the last answers the greedy tokens.

A :class:`PairPath` is a small model's process (the draft) beside a large model's chain: speculative
decoding or a cascade. Both chains are driven as :class:`~fedintel.inference.stage.IncrementalLM`
(:class:`PathLM`: the worker's ``forward``/``truncate``/``end`` operations), so the inference modules'
own algorithms run over them unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedintel.inference.launcher import WorkerGroup, WorkerProcess
from fedintel.inference.protocol import Client, LinkSecurity, ProtocolError, RemoteError
from fedintel.inference.split import SplitError, SplitPipeline, stage_bounds
from fedintel.inference.stage import StepOutput

log = logging.getLogger(__name__)

DEVICE_MODULE = "fedintel.serving.device"


class PathDown(RuntimeError):
    """A device of the path is unreachable or died (the request should fail over)."""


class PathRefused(RuntimeError):
    """A device refused the request (it stays healthy; the request fails with the message)."""


@dataclass
class DraftSpec:
    """The small model of a pair: a model name and how many of its layers it runs (one process)."""

    model: str
    layers: int
    num_layers: int | None = None


@dataclass
class PathSpec:
    """What one path runs: the model id requests name, the adapter merged into its (large) model, its split,
    and for a pair (``kind`` speculative or cascade) the draft and the pair's settings."""

    name: str
    model_id: str
    adapter: Path | None = None
    cuts: list[int] = field(default_factory=list)
    kind: str = "single"
    draft: DraftSpec | None = None
    k: int = 4
    threshold: float = 0.5
    confidence: str = "mean_prob"


@dataclass
class StepResult:
    """Greedy tokens of one step, its wall time and each stage's compute time (seconds)."""

    tokens: list[int]
    wall_s: float
    stage_s: list[float]


class DevicePath:
    """A running chain of serving devices for one :class:`PathSpec`."""

    def __init__(self, spec: PathSpec, group: WorkerGroup, workers: list[WorkerProcess],
                 timeout: float = 60.0) -> None:
        self.spec = spec
        self.group = group
        self.workers = workers
        self.timeout = timeout
        names = [w.name for w in workers]
        try:
            pipe = SplitPipeline([w.address for w in workers], group.security, timeout, names=names)
        except SplitError as err:
            raise PathDown(f"path {spec.name}: {err}") from None
        self.max_context = pipe.max_context
        self.vocab_size = pipe.vocab_size
        self.clients: list[Client] = pipe.clients  # the pipeline configured the chain; we keep its clients
        self.down_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device_names(self) -> list[str]:
        """The names of the path's device processes, first stage first."""
        return [w.name for w in self.workers]

    def alive(self) -> bool:
        """Whether every process of the path still runs."""
        return self.down_reason is None and all(w.alive() for w in self.workers)

    def call(self, op: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
             timeout: float | None = None) -> tuple[dict, dict[str, torch.Tensor], float]:
        """One request to the first stage: reply meta, tensors and wall seconds. A dead or unreachable device
        raises :class:`PathDown`; a refusal by a healthy chain :class:`PathRefused`."""
        t0 = time.perf_counter()
        try:
            reply = self.clients[0].request(op, meta, tensors, timeout=timeout)
        except ProtocolError as err:
            raise PathDown(f"path {self.name}: {err}") from None
        except RemoteError as err:
            if not all(w.alive() for w in self.workers):  # a later stage died: the chain reports it
                raise PathDown(f"path {self.name}: {err}") from None
            raise PathRefused(str(err)) from None
        return reply.meta, reply.tensors, time.perf_counter() - t0

    def prefill(self, session: str, ids: list[int]) -> StepResult:
        """Start ``session`` with ``ids`` (alone); the next greedy token."""
        meta, t, wall = self.call("serve_prefill", {"session": session},
                                   {"input_ids": torch.tensor([ids], dtype=torch.int64)})
        return StepResult([int(t["argmax"][0])], wall, [float(x) for x in meta.get("timing", [])])

    def prefill_many(self, sessions: list[str], prompts: list[list[int]]) -> StepResult:
        """Start several sessions in one forward (each as :meth:`prefill` starts it alone); their next tokens."""
        meta, t, wall = self.call("serve_prefill_many", {"sessions": sessions, "prompts": prompts})
        return StepResult([int(x) for x in t["argmax"].tolist()], wall, [float(x) for x in meta.get("timing", [])])

    def decode(self, rows: list[str], last: list[int], end: list[str] | None = None) -> StepResult:
        """One token for each row (batched); ``last`` is each row's newest token. ``end``: sessions that
        finished since the last step, freed by every stage before the step (no round trip of their own)."""
        meta, t, wall = self.call("serve_decode", {"rows": rows, **({"end": end} if end else {})},
                                   {"input_ids": torch.tensor(last, dtype=torch.int64).unsqueeze(1)})
        return StepResult([int(x) for x in t["argmax"].tolist()], wall, [float(x) for x in meta.get("timing", [])])

    def end(self, sessions: list[str]) -> None:
        """Free sessions on every stage (best effort: a dead path frees nothing)."""
        if sessions:
            try:
                self.call("serve_end", {"sessions": sessions}, timeout=10.0)
            except (PathDown, PathRefused) as err:
                log.info("ending sessions on %s: %s", self.name, err)

    def reset(self) -> None:
        """Drop every serving session on every stage."""
        self.call("serve_reset", {}, timeout=10.0)

    def ping(self) -> list[dict]:
        """Each stage's ping answer (role, layers, sessions held, batch size ...)."""
        out = []
        for w, c in zip(self.workers, self.clients, strict=True):
            try:
                out.append(c.request("ping", timeout=5.0).meta)
            except (ProtocolError, RemoteError) as err:
                out.append({"name": w.name, "error": str(err)})
        return out

    def close(self) -> None:
        """Close the links (the processes belong to the group)."""
        for c in self.clients:
            c.close()


class PathLM:
    """A :class:`DevicePath` as an :class:`~fedintel.inference.stage.IncrementalLM` (one KV cache per session
    on every stage), counting where the time went: ``prefill_s`` (steps from position 0), ``decode_s`` (the
    others) and each stage's compute (seconds)."""

    def __init__(self, path: DevicePath) -> None:
        self.path = path
        self.max_context = path.max_context
        self.prefill_s = self.decode_s = 0.0
        self.stage_s = [0.0] * len(path.workers)
        self.steps = 0

    def open_session(self) -> str:
        return uuid.uuid4().hex

    def step(self, session: str, ids: torch.Tensor, pos: int, n_logits: int = 1,
             want_logits: bool = False) -> StepOutput:
        meta, t, wall = self.path.call("forward", {"session": session, "pos": pos, "n_logits": n_logits,
                                                   "want_logits": want_logits}, {"input_ids": ids.to(torch.int64)})
        if pos == 0:
            self.prefill_s += wall
        else:
            self.decode_s += wall
        timing = [float(x) for x in meta.get("timing", [])]
        if len(timing) == len(self.stage_s):
            self.stage_s = [a + b for a, b in zip(self.stage_s, timing, strict=True)]
        self.steps += 1
        return StepOutput(t["argmax"], t.get("logits"), wall)

    def truncate(self, session: str, length: int) -> None:
        self.path.call("truncate", {"session": session, "length": length})

    def close_session(self, session: str) -> None:
        try:
            self.path.call("end", {"session": session}, timeout=10.0)
        except (PathDown, PathRefused) as err:  # best effort: a dead path frees nothing
            log.info("ending a session on %s: %s", self.path.name, err)


class PairPath:
    """A draft process and a target chain serving requests together (speculative decoding or a cascade).

    Exposes what the service and the scheduler use of a :class:`DevicePath`: ``spec``, ``workers`` (draft
    first), ``clients`` (the large model's: expert scoring), ``max_context`` (the smaller of the two, less
    ``k`` for speculative decoding, whose verification looks ``k`` tokens ahead), ``alive``, ``ping``,
    ``end`` and ``close``."""

    def __init__(self, spec: PathSpec, small: DevicePath, large: DevicePath) -> None:
        self.spec = spec
        self.small, self.large = small, large
        self.workers = small.workers + large.workers
        self.clients = large.clients
        margin = spec.k if spec.kind == "speculative" else 0
        self.max_context = min(small.max_context, large.max_context) - margin
        self.down_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device_names(self) -> list[str]:
        """Every device of the pair, the draft first."""
        return [w.name for w in self.workers]

    def alive(self) -> bool:
        """Whether every process of the pair still runs."""
        return self.down_reason is None and self.small.alive() and self.large.alive()

    def end(self, sessions: list[str]) -> None:
        """Nothing to do: a pair's sessions are closed by the decoding that opened them."""

    def ping(self) -> list[dict]:
        """Each device's ping answer, the draft first."""
        return self.small.ping() + self.large.ping()

    def close(self) -> None:
        """Close the links of both chains."""
        self.small.close()
        self.large.close()


@dataclass(frozen=True)
class DeviceOptions:
    """What every device process of a service is started with (``python -m fedintel.serving.device``)."""

    device: str = "cpu"
    dtype: str = "float32"
    max_sessions: int = 64
    prefix_cache: int = 8  # prompts whose KV each device keeps for reuse
    pack_weights: str = "auto"  # oneDNN-prepacked linears: auto (on a CPU), on, off
    batch_hint: int = 16  # the decode batch the packed weights are laid out for

    def args(self) -> list[str]:
        return ["--device", self.device, "--dtype", self.dtype, "--max-sessions", str(self.max_sessions),
                "--prefix-cache", str(self.prefix_cache), "--pack-weights", self.pack_weights,
                "--batch-hint", str(self.batch_hint)]


def _worker_args(model: str, a: int, b: int, num_layers: int | None, opts: DeviceOptions,
                 adapter: Path | None) -> list[str]:
    args = ["--model", model, "--layers", f"{a}:{b}", *opts.args()]
    if num_layers is not None:
        args += ["--num-layers", str(num_layers)]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    return args


def stage_specs(spec: PathSpec, model: str, total_layers: int, num_layers: int | None,
                opts: DeviceOptions) -> list[tuple[str, list[str]]]:
    """The ``(device name, worker args)`` of each process of ``spec``: a pair's draft first, then the stages
    (named ``NAME``, ``NAME-s0``...; in a pair ``NAME-draft`` and ``NAME-target`` or, for a cascade,
    ``NAME-small`` and ``NAME-large``)."""
    out = []
    base = spec.name
    if spec.draft is not None:
        small, large = ("draft", "target") if spec.kind == "speculative" else ("small", "large")
        d = spec.draft
        out.append((f"{spec.name}-{small}", _worker_args(d.model, 0, d.layers, d.num_layers, opts, None)))
        base = f"{spec.name}-{large}"
    bounds = stage_bounds(spec.cuts, total_layers)
    for i, (a, b) in enumerate(bounds):
        out.append((base if len(bounds) == 1 else f"{base}-s{i}",
                    _worker_args(model, a, b, num_layers, opts, spec.adapter)))
    return out


def connect_path(spec: PathSpec, group: WorkerGroup, workers: list[WorkerProcess],
                 timeout: float = 60.0) -> DevicePath | PairPath:
    """Connect started ``workers`` (in :func:`stage_specs` order) into the path ``spec`` describes."""
    if spec.draft is None:
        return DevicePath(spec, group, workers, timeout)
    small = DevicePath(PathSpec(workers[0].name, spec.model_id), group, workers[:1], timeout)
    large = DevicePath(PathSpec(f"{spec.name} (large)", spec.model_id, spec.adapter, spec.cuts), group,
                       workers[1:], timeout)
    return PairPath(spec, small, large)


def start_path(group: WorkerGroup, spec: PathSpec, model: str, total_layers: int, num_layers: int | None,
               opts: DeviceOptions, timeout: float = 60.0) -> DevicePath | PairPath:
    """Start the processes of ``spec`` in ``group`` and connect them."""
    workers = group.start(stage_specs(spec, model, total_layers, num_layers, opts))
    return connect_path(spec, group, workers, timeout)


def new_group(security: LinkSecurity | None, threads: int, start_timeout: float = 180.0) -> WorkerGroup:
    """A worker group that starts serving devices (``python -m fedintel.serving.device``)."""
    return WorkerGroup(security, threads=threads, start_timeout=start_timeout, module=DEVICE_MODULE)
