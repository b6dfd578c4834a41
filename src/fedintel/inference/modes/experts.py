"""``fedintel infer experts``: subtasks of a query routed to expert device processes by embedding
similarity; the router's accuracy measured on held-out chatterbot samples."""

from __future__ import annotations

from dataclasses import dataclass

from fedintel.inference.config import InferConfig
from fedintel.inference.embedding import Encoder, domain_corpus
from fedintel.inference.experts import EmbeddingRouter, ExpertAnswer, ExpertEnsemble, routing_accuracy
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.modes.common import link_security, worker_model_args
from fedintel.inference.modes.report import ModeReport, ReportTable


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


def run(cfg: InferConfig) -> ExpertsModeReport:
    """One expert process per domain (with its adapter from ``cfg.adapters``) answers its part of ``cfg.prompt``."""
    domains = list(cfg.domains)
    rows = domain_corpus(domains, per_domain=60, seed=0)
    train = {d: [t for t, y in rows if domains[y] == d][:10] for d in domains}
    used = {t for v in train.values() for t in v}
    test = [(t, domains[y]) for t, y in rows if t not in used]
    router = EmbeddingRouter(Encoder("minilm-l6"), train)
    acc = routing_accuracy(router, [t for t, _ in test], [d for _, d in test])
    with WorkerGroup(link_security(cfg), threads=cfg.threads) as group:
        specs = [(d, worker_model_args(cfg.model, cfg.num_layers)
                  + (["--adapter", cfg.adapters[d]] if d in cfg.adapters else [])) for d in domains]
        workers = group.start(specs)
        ens = ExpertEnsemble({w.name: group.client(w, cfg.timeout_s) for w in workers}, router, cfg.max_new_tokens)
        try:
            ans = ens.answer(cfg.prompt)
        finally:
            ens.close()
    return ExpertsModeReport(domains, ans, acc, len(test))
