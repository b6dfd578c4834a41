"""``fedintel infer experts``: subtasks of a query routed to expert device processes by embedding
similarity.

Two sources of experts:

* ``adapters`` (domain -> PEFT directory) over chatterbot ``domains``: centroids from a few example texts
  per domain, and the router's accuracy on held-out chatterbot samples.
* ``from_run``: every cluster (or edge) adapter of a finished clustered (or hierarchical) run, routed by
  centroids the clients computed from their own data (:mod:`fedintel.inference.run_experts`). Each
  held-out query of the run is routed and scored by its expert, by the expert of its domain, by the
  ``global`` adapter (the run's own, or ``baseline``) and by the base model.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from fedintel.inference.config import InferConfig, InferConfigError
from fedintel.inference.embedding import Encoder, domain_corpus
from fedintel.inference.experts import (
    EmbeddingRouter,
    ExpertAnswer,
    ExpertEnsemble,
    ExpertError,
    routing_accuracy,
)
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.modes.common import link_security, runtime_args, worker_model_args
from fedintel.inference.modes.report import ModeReport, ReportTable
from fedintel.inference.protocol import Client, ProtocolError, RemoteError


@dataclass
class ExpertsModeReport(ModeReport):
    """The ensemble's answer to the query, and the routing accuracy on ``held_out`` samples (0..1)."""

    domains: list[str]
    answer: ExpertAnswer
    routing_accuracy: float
    held_out: int

    def render(self) -> list[ReportTable | str]:
        ans = self.answer
        table = ReportTable(f"experts: {len(self.domains)} devices, routing by MiniLM similarity",
                            ("subtask", "expert", "answer"), [(s, e, a.strip()[:80]) for s, e, a in ans.parts])
        line = (f"routing accuracy on {self.held_out} held-out chatterbot samples: {self.routing_accuracy:.1%} "
                f"(chance {1 / len(self.domains):.1%}); query latency {ans.seconds:.3f} s (routing {ans.route_s:.3f} s)")
        return [table, line]


@dataclass(frozen=True)
class DomainRow:
    """One domain's held-out queries: where they went and the mean token loss of each way to answer them."""

    domain: str
    queries: int
    expert: str
    routed_right: int
    loss_routed: float
    loss_own: float
    loss_global: float | None
    loss_base: float


@dataclass
class RunExpertsReport(ModeReport):
    """Routing and losses of a run's experts on its held-out queries; ``domains[-1]`` is over all domains."""

    run_dir: str
    experts: list[str]
    baseline: str | None
    domains: list[DomainRow]
    answer: ExpertAnswer

    @property
    def overall(self) -> DomainRow:
        return self.domains[-1]

    @property
    def routing_accuracy(self) -> float:
        return self.overall.routed_right / max(1, self.overall.queries)

    def render(self) -> list[ReportTable | str]:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        rows = [(r.domain, str(r.queries), r.expert, f"{r.routed_right}/{r.queries}", f(r.loss_routed), f(r.loss_own),
                 f(r.loss_global), f(r.loss_base)) for r in self.domains]
        table = ReportTable(f"experts from {self.run_dir}: {len(self.experts)} adapters, routed by their clients' "
                            "MiniLM centroids; mean token loss on held-out queries",
                            ("domain", "queries", "its expert", "routed to it", "routed experts", "its expert",
                             "global" + (f" ({self.baseline})" if self.baseline else ""), "base model"),
                            rows, (1, 3, 4, 5, 6, 7))
        o = self.overall
        line = (f"routing accuracy {self.routing_accuracy:.1%} on {o.queries} held-out queries "
                f"(chance {1 / len(self.experts):.1%})")
        if o.loss_global is not None:
            line += (f"; routed experts {o.loss_routed:.3f} vs global {o.loss_global:.3f} "
                     f"({(o.loss_routed - o.loss_global) / o.loss_global:+.1%})")
        else:
            line += "; no global adapter to compare with (set baseline: a FedAvg run directory)"
        ans = self.answer
        answer = ReportTable(f"the prompt, answered by the routed experts ({ans.seconds:.2f} s)",
                             ("subtask", "expert", "answer"), [(s, e, a.strip()[:80]) for s, e, a in ans.parts])
        return [table, line, answer]


def run(cfg: InferConfig) -> ExpertsModeReport | RunExpertsReport:
    """One expert process per domain (with its adapter from ``cfg.adapters``) answers its part of ``cfg.prompt``;
    with ``cfg.from_run``, one per adapter of that run (:func:`run_from_run`)."""
    if cfg.from_run:
        return run_from_run(cfg)
    domains = list(cfg.domains)
    rows = domain_corpus(domains, per_domain=60, seed=0)
    train = {d: [t for t, y in rows if domains[y] == d][:10] for d in domains}
    used = {t for v in train.values() for t in v}
    test = [(t, domains[y]) for t, y in rows if t not in used]
    router = EmbeddingRouter(Encoder("minilm-l6"), train)
    acc = routing_accuracy(router, [t for t, _ in test], [d for _, d in test])
    with WorkerGroup(link_security(cfg), threads=cfg.threads) as group:
        specs = [(d, worker_model_args(cfg.model, cfg.num_layers) + runtime_args(cfg)
                  + (["--adapter", cfg.adapters[d]] if d in cfg.adapters else [])) for d in domains]
        workers = group.start(specs)
        ens = ExpertEnsemble({w.name: group.client(w, cfg.timeout_s) for w in workers}, router, cfg.max_new_tokens)
        try:
            ans = ens.answer(cfg.prompt)
        finally:
            ens.close()
    return ExpertsModeReport(domains, ans, acc, len(test))


SCORE_CHUNK = 8
"""Queries per ``score`` request: each request stays well inside the socket timeout on a busy CPU."""


def _score(name: str, client: Client, texts: list[str]) -> torch.Tensor:
    try:
        return torch.cat([client.request("score", {"texts": texts[i:i + SCORE_CHUNK]}).tensors["loss"]
                          for i in range(0, len(texts), SCORE_CHUNK)])
    except (ProtocolError, RemoteError) as err:
        raise ExpertError(f"device {name} could not score the held-out queries: {err}") from None


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]  # a query of under two tokens has no loss
    return sum(kept) / len(kept) if kept else float("nan")


def run_from_run(cfg: InferConfig) -> RunExpertsReport:
    """Serve every expert adapter of run ``cfg.from_run``, route its held-out queries, and measure."""
    from fedintel.inference.run_experts import load_run_experts, resolve_baseline

    assert cfg.from_run is not None
    encoder = Encoder("minilm-l6")
    rx = load_run_experts(cfg.from_run, encoder)
    if "model" in cfg.model_fields_set and cfg.model != rx.model:
        raise InferConfigError(f"model: {cfg.model}, but the run's adapters were trained on {rx.model}")
    if "num_layers" in cfg.model_fields_set and cfg.num_layers != rx.num_layers:
        raise InferConfigError(f"num_layers: {cfg.num_layers}, but the run's adapters were trained with "
                               f"num_layers={rx.num_layers}")
    baseline = resolve_baseline(cfg.baseline, rx) if cfg.baseline else rx.global_adapter
    router = EmbeddingRouter.from_statistics(encoder, rx.stats)
    routed = router.route([q.route_text for q in rx.queries])
    model_args = worker_model_args(rx.model, rx.num_layers) + runtime_args(cfg)
    specs = [(n, [*model_args, "--adapter", str(p)]) for n, p in rx.experts.items()]
    specs += [("global", [*model_args, "--adapter", str(baseline)])] if baseline else []
    specs += [("base", model_args)]
    texts = [q.score_text for q in rx.queries]
    with WorkerGroup(link_security(cfg), threads=cfg.threads) as group:
        clients = {w.name: group.client(w, cfg.timeout_s) for w in group.start(specs)}
        experts = {n: clients[n] for n in rx.experts}
        ens = ExpertEnsemble(experts, router, cfg.max_new_tokens)
        try:
            with ThreadPoolExecutor(max_workers=len(clients)) as pool:
                losses = dict(zip(clients, pool.map(lambda n: _score(n, clients[n], texts), clients), strict=True))
            answer = ens.answer(cfg.prompt)
        finally:
            ens.close()
            for name in ("global", "base"):
                if name in clients:
                    clients[name].close()

    def row(domain: str, idx: list[int]) -> DomainRow:
        own = rx.domain_expert.get(rx.queries[idx[0]].domain, "") if domain != "all" else "-"
        return DomainRow(
            domain, len(idx), own,
            sum(routed[i] == rx.domain_expert.get(rx.queries[i].domain) for i in idx),
            _mean([float(losses[routed[i]][i]) for i in idx]),
            _mean([float(losses[rx.domain_expert.get(rx.queries[i].domain, routed[i])][i]) for i in idx]),
            _mean([float(losses["global"][i]) for i in idx]) if "global" in losses else None,
            _mean([float(losses["base"][i]) for i in idx]),
        )

    by_domain: dict[str, list[int]] = {}
    for i, q in enumerate(rx.queries):
        by_domain.setdefault(q.domain, []).append(i)
    rows = [row(d, idx) for d, idx in sorted(by_domain.items())] + [row("all", list(range(len(rx.queries))))]
    shown = None if baseline is None else ("run's own" if baseline == rx.global_adapter else str(cfg.baseline))
    return RunExpertsReport(str(rx.run_dir), list(rx.experts), shown, rows, answer)
