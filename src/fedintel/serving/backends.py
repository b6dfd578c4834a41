"""Device paths: chains of serving device processes that each hold one model (base or an adapter merged).

A path is one process holding the whole model, or split stages (``cuts``), started on this machine by a
:class:`~fedintel.inference.launcher.WorkerGroup` (each process with its own certificate of the service's
CA; every link is mutual TLS unless the config says ``insecure``, loopback only). The front talks to the
first stage; stages pass activations down the chain, and the last answers the greedy tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedintel.inference.launcher import WorkerGroup, WorkerProcess
from fedintel.inference.protocol import Client, LinkSecurity, ProtocolError, RemoteError
from fedintel.inference.split import SplitError, SplitPipeline, stage_bounds

log = logging.getLogger(__name__)

DEVICE_MODULE = "fedintel.serving.device"


class PathDown(RuntimeError):
    """A device of the path is unreachable or died (the request should fail over)."""


class PathRefused(RuntimeError):
    """A device refused the request (it stays healthy; the request fails with the message)."""


@dataclass
class PathSpec:
    """What one path runs: a model id it serves, the adapter merged into its base, and its split."""

    name: str
    model_id: str
    adapter: Path | None = None
    cuts: list[int] = field(default_factory=list)


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

    def _call(self, op: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
              timeout: float | None = None) -> tuple[dict, dict[str, torch.Tensor], float]:
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
        meta, t, wall = self._call("serve_prefill", {"session": session},
                                   {"input_ids": torch.tensor([ids], dtype=torch.int64)})
        return StepResult([int(t["argmax"][0])], wall, [float(x) for x in meta.get("timing", [])])

    def decode(self, rows: list[str], last: list[int]) -> StepResult:
        """One token for each row (batched); ``last`` is each row's newest token."""
        meta, t, wall = self._call("serve_decode", {"rows": rows},
                                   {"input_ids": torch.tensor(last, dtype=torch.int64).unsqueeze(1)})
        return StepResult([int(x) for x in t["argmax"].tolist()], wall, [float(x) for x in meta.get("timing", [])])

    def end(self, sessions: list[str]) -> None:
        """Free sessions on every stage (best effort: a dead path frees nothing)."""
        if sessions:
            try:
                self._call("serve_end", {"sessions": sessions}, timeout=10.0)
            except (PathDown, PathRefused) as err:
                log.info("ending sessions on %s: %s", self.name, err)

    def reset(self) -> None:
        """Drop every serving session on every stage."""
        self._call("serve_reset", {}, timeout=10.0)

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


def stage_specs(spec: PathSpec, model: str, total_layers: int, num_layers: int | None, device: str, dtype: str,
                max_sessions: int) -> list[tuple[str, list[str]]]:
    """The ``(device name, worker args)`` of each stage of ``spec``."""
    out = []
    bounds = stage_bounds(spec.cuts, total_layers)
    for i, (a, b) in enumerate(bounds):
        args = ["--model", model, "--layers", f"{a}:{b}", "--device", device, "--dtype", dtype,
                "--max-sessions", str(max_sessions)]
        if num_layers is not None:
            args += ["--num-layers", str(num_layers)]
        if spec.adapter is not None:
            args += ["--adapter", str(spec.adapter)]
        out.append((spec.name if len(bounds) == 1 else f"{spec.name}-s{i}", args))
    return out


def start_path(group: WorkerGroup, spec: PathSpec, model: str, total_layers: int, num_layers: int | None,
               device: str, dtype: str, max_sessions: int, timeout: float = 60.0) -> DevicePath:
    """Start the processes of ``spec`` in ``group`` and connect them into a :class:`DevicePath`."""
    workers = group.start(stage_specs(spec, model, total_layers, num_layers, device, dtype, max_sessions))
    return DevicePath(spec, group, workers, timeout)


def new_group(security: LinkSecurity | None, threads: int, start_timeout: float = 180.0) -> WorkerGroup:
    """A worker group that starts serving devices (``python -m fedintel.serving.device``)."""
    return WorkerGroup(security, threads=threads, start_timeout=start_timeout, module=DEVICE_MODULE)
