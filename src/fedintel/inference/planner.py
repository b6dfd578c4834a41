"""Where to cut a transformer: dynamic programming over layers and devices.

The devices form a chain (their order in the list: for instance end device, roadside unit, edge server).
A plan uses an increasing subsequence of them, each running a contiguous, non-empty block of layers;
the first stage also holds the token embedding, the last the final norm and LM head. The prompt starts
on the *source* device and the answer returns to it along the chain (as the runtime in
:mod:`fedintel.inference.split` does).

Latency of a whole generation (prefill of ``P`` prompt tokens, then ``T - 1`` single-token steps)::

    sum over stages   FLOPs(stage over the workload) / device FLOP/s
  + sum over hops     passes * 2 * link latency + 8 * (activation + reply bytes over the workload) / rate

Every term belongs to one stage or one hop, so the optimum over cut points *and* device choice is found
by dynamic programming in ``O(L^2 N^2)``: ``best[l][j]`` is the least latency with layers ``[0, l)``
placed and the last of them on device ``j``. A stage whose weights plus KV cache exceed its device's
memory is infeasible. :func:`brute_force_split` enumerates every plan (for tests on small cases).

FLOPs follow :func:`fedintel.training.flops.forward_flops` (Kaplan et al., 2020) per layer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedintel.training.flops import ModelShape, forward_flops

FRAME_OVERHEAD_BYTES = 256
"""Bytes of framing per message (prefix, JSON header, TLS records: 22 bytes per 16 KiB), roughly."""


class PlanError(ValueError):
    """No feasible plan (memory too small, no link between chosen devices, ...); the message says which."""


@dataclass(frozen=True)
class DeviceSpec:
    """A device that can run layers: sustained compute in FLOP/s and memory in bytes."""

    name: str
    flops_per_s: float
    memory_bytes: float = math.inf
    mem_bw_bytes_per_s: float = math.inf

    def compute_s(self, flops: float, weight_bytes: float = 0.0) -> float:
        """Seconds for a pass of ``flops`` FLOPs that reads ``weight_bytes`` of weights (roofline: the
        slower of compute and memory traffic; decoding one token is usually memory-bound)."""
        return max(flops / self.flops_per_s, weight_bytes / self.mem_bw_bytes_per_s)


@dataclass(frozen=True)
class LinkSpec:
    """A one-way link: data rate in bit/s and one-way latency in seconds."""

    rate_bps: float
    latency_s: float = 0.0

    def transfer_s(self, nbytes: float, messages: int = 1) -> float:
        """Seconds to send ``nbytes`` bytes in ``messages`` messages."""
        return messages * self.latency_s + 8.0 * nbytes / self.rate_bps


Links = Mapping[tuple[int, int], LinkSpec]


@dataclass(frozen=True)
class SplitProblem:
    """The cost of each piece of the model over a whole generation.

    ``layer_flops[l]`` and ``layer_bytes[l]`` are layer ``l``'s FLOPs over the workload and its memory
    (weights + KV cache, bytes); ``first_*``/``last_*`` are the embedding and the norm + LM head.
    ``passes`` messages cross each hop; ``hop_bytes`` is what crosses one hop over the workload (both ways).
    """

    layer_flops: tuple[float, ...]
    layer_bytes: tuple[float, ...]
    first_flops: float = 0.0
    first_bytes: float = 0.0
    last_flops: float = 0.0
    last_bytes: float = 0.0
    passes: int = 1
    hop_bytes: float = 0.0
    source_hop_bytes: float = 0.0

    @property
    def num_layers(self) -> int:
        """Number of layers to place."""
        return len(self.layer_flops)


@dataclass
class SplitPlan:
    """Stages as ``(device index, start layer, end layer)`` and the modelled latency in seconds."""

    stages: list[tuple[int, int, int]]
    latency_s: float
    compute_s: list[float] = field(default_factory=list)
    link_s: list[float] = field(default_factory=list)

    @property
    def cuts(self) -> list[int]:
        """Interior cut points (layer indices where a new stage starts)."""
        return [s for _, s, _ in self.stages[1:]]

    @property
    def devices(self) -> list[int]:
        """Device indices used, in order."""
        return [d for d, _, _ in self.stages]


def problem_from_config(config: object, prompt_tokens: int, new_tokens: int, dtype_bytes: int = 4) -> SplitProblem:
    """Costs of generating ``new_tokens`` tokens after a ``prompt_tokens``-token prompt with a HF decoder.

    Per layer: weights ``4 d^2 + 3 d f`` (attention with grouped KV heads, gated MLP) plus norms; KV cache
    ``2 kv_heads head_dim (P + T)`` values.
    """
    d = int(config.hidden_size)  # type: ignore[attr-defined]
    f = int(getattr(config, "intermediate_size", 4 * d))
    heads = int(config.num_attention_heads)  # type: ignore[attr-defined]
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or d // heads)
    vocab = int(config.vocab_size)  # type: ignore[attr-defined]
    n_layers = int(config.num_hidden_layers)  # type: ignore[attr-defined]
    tied = bool(getattr(config, "tie_word_embeddings", False))
    params = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * f + 2 * d
    shape = ModelShape(num_params=params, num_trainable=0, num_layers=1, hidden_size=d)
    passes = max(1, new_tokens)
    flops = forward_flops(shape, prompt_tokens, prompt_tokens)
    flops += sum(forward_flops(shape, 1, prompt_tokens + t) for t in range(1, new_tokens))
    ctx = prompt_tokens + new_tokens
    layer_bytes = params * dtype_bytes + 2 * kv * hd * ctx * dtype_bytes
    act_bytes = (prompt_tokens + (passes - 1)) * d * dtype_bytes
    reply_bytes = 8
    return SplitProblem(
        layer_flops=(float(flops),) * n_layers,
        layer_bytes=(float(layer_bytes),) * n_layers,
        first_flops=0.0,
        first_bytes=float(vocab * d * dtype_bytes),
        last_flops=float(passes * 2 * vocab * d),
        last_bytes=float((vocab * d if tied else vocab * d) * dtype_bytes + d * dtype_bytes),
        passes=passes,
        hop_bytes=float(act_bytes + passes * (reply_bytes + 2 * FRAME_OVERHEAD_BYTES)),
        source_hop_bytes=float((prompt_tokens + passes - 1) * 8 + passes * (reply_bytes + 2 * FRAME_OVERHEAD_BYTES)),
    )


def _link(links: Links, a: int, b: int) -> LinkSpec | None:
    if a == b:
        return None
    return links.get((a, b))


def _hop_s(problem: SplitProblem, links: Links, a: int, b: int, nbytes: float) -> float:
    if a == b:
        return 0.0
    link = _link(links, a, b)
    if link is None:
        return math.inf
    return 2 * problem.passes * link.latency_s + 8.0 * nbytes / link.rate_bps


def _stage_s(problem: SplitProblem, device: DeviceSpec, start: int, end: int) -> float:
    flops = sum(problem.layer_flops[start:end])
    mem = sum(problem.layer_bytes[start:end])
    if start == 0:
        flops += problem.first_flops
        mem += problem.first_bytes
    if end == problem.num_layers:
        flops += problem.last_flops
        mem += problem.last_bytes
    if mem > device.memory_bytes:
        return math.inf
    return device.compute_s(flops)


def evaluate_plan(problem: SplitProblem, devices: Sequence[DeviceSpec], links: Links,
                  stages: Sequence[tuple[int, int, int]], source: int = 0) -> SplitPlan:
    """The modelled latency of ``stages`` (``inf`` if infeasible), with per-stage and per-hop parts."""
    compute = [_stage_s(problem, devices[d], a, b) for d, a, b in stages]
    hops = [_hop_s(problem, links, source, stages[0][0], problem.source_hop_bytes)]
    hops += [_hop_s(problem, links, p[0], q[0], problem.hop_bytes) for p, q in zip(stages, stages[1:], strict=False)]
    return SplitPlan(list(stages), sum(compute) + sum(hops), compute, hops)


def _check_inputs(problem: SplitProblem, devices: Sequence[DeviceSpec], source: int) -> None:
    if not devices:
        raise PlanError("no devices to place the model on")
    if problem.num_layers == 0:
        raise PlanError("the model has no layers")
    if not 0 <= source < len(devices):
        raise PlanError(f"source device {source} is not one of the {len(devices)} devices")
    for d in devices:
        if not d.flops_per_s > 0:
            raise PlanError(f"device {d.name}: flops_per_s must be > 0")


def _infeasible(problem: SplitProblem, devices: Sequence[DeviceSpec]) -> PlanError:
    need = sum(problem.layer_bytes) + problem.first_bytes + problem.last_bytes
    have = sum(d.memory_bytes for d in devices)
    return PlanError(
        f"no feasible split: the model needs {need / 1e6:.1f} MB over {problem.num_layers} layers and the devices "
        f"have {have / 1e6:.1f} MB in all (or the links between them are missing)"
    )


def plan_split(problem: SplitProblem, devices: Sequence[DeviceSpec], links: Links, source: int = 0,
               max_stages: int | None = None) -> SplitPlan:
    """The latency-optimal plan by dynamic programming (devices used in list order)."""
    _check_inputs(problem, devices, source)
    L, N = problem.num_layers, len(devices)
    max_stages = max_stages or N
    inf = math.inf
    # best[k][e][j]: least latency with layers [0, l) placed in k stages, the last on device j
    best = [[[inf] * N for _ in range(L + 1)] for _ in range(max_stages + 1)]
    back: dict[tuple[int, int, int], tuple[int, int]] = {}
    for k in range(1, max_stages + 1):
        for e in range(1, L + 1):
            for j in range(N):
                if k == 1:
                    cost = _hop_s(problem, links, source, j, problem.source_hop_bytes) + _stage_s(problem, devices[j], 0, e)
                    if cost < best[k][e][j]:
                        best[k][e][j] = cost
                        back[(k, e, j)] = (0, -1)
                    continue
                for lp in range(k - 1, e):
                    stage = _stage_s(problem, devices[j], lp, e)
                    if stage == inf:
                        continue
                    for jp in range(j):
                        prev = best[k - 1][lp][jp]
                        if prev == inf:
                            continue
                        cost = prev + _hop_s(problem, links, jp, j, problem.hop_bytes) + stage
                        if cost < best[k][e][j]:
                            best[k][e][j] = cost
                            back[(k, e, j)] = (lp, jp)
    end = min(((best[k][L][j], k, j) for k in range(1, max_stages + 1) for j in range(N)), default=(inf, 0, 0))
    if end[0] == inf:
        raise _infeasible(problem, devices)
    _, k, j = end
    stages: list[tuple[int, int, int]] = []
    e = L
    while k >= 1:
        lp, jp = back[(k, e, j)]
        stages.append((j, lp, e))
        e, j, k = lp, jp, k - 1
    stages.reverse()
    return evaluate_plan(problem, devices, links, stages, source)


def brute_force_split(problem: SplitProblem, devices: Sequence[DeviceSpec], links: Links, source: int = 0,
                      max_stages: int | None = None) -> SplitPlan:
    """Every plan enumerated; exponential, for checking :func:`plan_split` on small cases."""
    _check_inputs(problem, devices, source)
    L, N = problem.num_layers, len(devices)
    best: SplitPlan | None = None
    for m in range(1, min(max_stages or N, N, L) + 1):
        for devs in itertools.combinations(range(N), m):
            for cuts in itertools.combinations(range(1, L), m - 1):
                bounds = [0, *cuts, L]
                stages = [(d, bounds[i], bounds[i + 1]) for i, d in enumerate(devs)]
                plan = evaluate_plan(problem, devices, links, stages, source)
                if best is None or plan.latency_s < best.latency_s:
                    best = plan
    if best is None or best.latency_s == math.inf:
        raise _infeasible(problem, devices)
    return best


def chain_links(links: Sequence[LinkSpec], symmetric: bool = True) -> dict[tuple[int, int], LinkSpec]:
    """Links ``i -> i+1`` from a list (and back, if ``symmetric``); other pairs reach each other through
    the chain only if you add them. Device 0 reaches device ``j`` via the sum of the links in between
    (latencies add, the rate is the slowest)."""
    out: dict[tuple[int, int], LinkSpec] = {}
    n = len(links) + 1
    for a in range(n):
        for b in range(a + 1, n):
            seg = links[a:b]
            link = LinkSpec(min(s.rate_bps for s in seg), sum(s.latency_s for s in seg))
            out[(a, b)] = link
            if symmetric:
                out[(b, a)] = link
    return out
