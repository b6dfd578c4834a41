"""``fedintel infer analytics``: classifier devices with non-iid local data answer together; only
probabilities or votes leave them. Federated accuracy against the best device alone."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedintel.inference.analytics import AnalyticsReport, FederatedClassifier
from fedintel.inference.config import InferConfig
from fedintel.inference.embedding import domain_corpus, write_labelled
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.modes.common import link_security
from fedintel.inference.modes.report import ModeReport, ReportTable

METHODS = ("mean_probs", "weighted_probs", "vote")


@dataclass
class AnalyticsModeReport(ModeReport):
    """Per aggregation method, the federated evaluation of the held-out quarter of the samples."""

    num_devices: int
    domains: list[str]
    methods: dict[str, AnalyticsReport]

    def render(self) -> list[ReportTable | str]:
        rows = [(m, f"{r.federated_accuracy:.1%}", f"{r.best_single:.1%}", str(r.bytes_up))
                for m, r in self.methods.items()]
        title = f"federated analytics: {self.num_devices} devices, {len(self.domains)} domains, non-iid local data"
        return [ReportTable(title, ("aggregation", "federated accuracy", "best single device", "bytes up"), rows,
                            (1, 2, 3))]


def run(cfg: InferConfig) -> AnalyticsModeReport:
    """``cfg.num_devices`` classifier processes, each trained on mostly its own domains, evaluated together."""
    domains = list(cfg.domains)
    rows = domain_corpus(domains, per_domain=40, seed=1)
    test, train = rows[: len(rows) // 4], rows[len(rows) // 4:]
    n = cfg.num_devices
    methods: dict[str, AnalyticsReport] = {}
    with tempfile.TemporaryDirectory(prefix="fedintel-analytics-") as tmp:
        specs = []
        for k in range(n):
            local = [r for r in train if r[1] % n == k] + [r for r in train if r[1] % n != k][k::10]
            path = write_labelled(Path(tmp) / f"device{k}.jsonl", [t for t, _ in local], [y for _, y in local])
            specs.append((f"device{k}", ["--role", "classifier", "--model", "minilm-l6", "--train-data", str(path),
                                         "--num-labels", str(len(domains))]))
        with WorkerGroup(link_security(cfg), threads=cfg.threads) as group:
            workers = group.start(specs)
            for method in METHODS:
                fed = FederatedClassifier({w.name: group.client(w, cfg.timeout_s) for w in workers}, method)
                try:
                    methods[method] = fed.evaluate([x for x, _ in test], [y for _, y in test])
                finally:
                    fed.close()
    return AnalyticsModeReport(n, domains, methods)
