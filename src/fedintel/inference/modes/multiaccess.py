"""``fedintel infer multiaccess``: requests over several paths to several serving processes, with injected
path failures and optionally the preferred node killed mid-batch, against the policy's simulation."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fedintel.inference.config import InferConfig, default_paths
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.modes.common import DEFAULT_PROMPTS, link_security, worker_model_args
from fedintel.inference.modes.report import ModeReport, ReportTable, measured_vs_simulated, ms
from fedintel.inference.multiaccess import (
    AllPathsFailed,
    FaultyLink,
    MultiAccessAnswer,
    MultiAccessClient,
    MultiAccessSim,
    rank_paths,
    simulate_multiaccess,
)


@dataclass
class MultiAccessModeReport(ModeReport):
    """Each request's outcome (an answer or the error naming every attempt), the batch's wall time (s), the
    preferred path, the node killed (if any) and the simulated outcome of the same policy."""

    policy: str
    preferred: str
    path_names: list[str]
    results: list[MultiAccessAnswer | AllPathsFailed]
    wall_s: float
    sim: MultiAccessSim
    killed: str | None = None

    @property
    def answered(self) -> list[MultiAccessAnswer]:
        return [r for r in self.results if not isinstance(r, AllPathsFailed)]

    @property
    def ok(self) -> bool:
        """Every request was answered, whatever failed on the way."""
        return len(self.answered) == len(self.results)

    def render(self) -> list[ReportTable | str]:
        ok, sim = self.answered, self.sim
        lat = sorted(r.seconds for r in ok)
        share = {n: sum(r.path == n for r in ok) / max(1, len(ok)) for n in self.path_names}
        rows = [("requests answered", f"{len(ok)}/{len(self.results)}", f"{sim.success_rate:.1%}"),
                ("retried on another path", str(sum(r.retried for r in ok)), ""),
                ("mean latency", ms(statistics.mean(lat)) if lat else "-", ms(sim.mean_s)),
                ("p95 latency", ms(lat[int(0.95 * (len(lat) - 1))]) if lat else "-", ms(sim.p95_s)),
                ("batch wall time", f"{self.wall_s:.2f} s", ""),
                *[(f"served via {n}", f"{share[n]:.0%}", f"{sim.served_by[n]:.0%}") for n in share]]
        return [measured_vs_simulated(f"multi-access, policy {self.policy} (preferred: {self.preferred})", rows)]


class _KillAfter:
    """Calls ``kill`` once, when the ``n``-th request is answered (at once for ``n`` = 0)."""

    def __init__(self, n: int | None, kill: Callable[[], None]) -> None:
        self.n, self.kill, self.done = n, kill, 0
        self.lock = threading.Lock()
        if n == 0:
            kill()

    def answered(self) -> None:
        with self.lock:
            self.done += 1
            if self.done == self.n:
                self.kill()


def run(cfg: InferConfig, notify: Callable[[str], None] | None = None) -> MultiAccessModeReport:
    """``cfg.requests`` requests, ``cfg.concurrency`` at a time, over ``cfg.paths`` (default three paths to
    nodes started here) through fault-injecting relays; with ``cfg.kill_after``, the preferred path's node is
    killed after that many answers (``notify`` hears when)."""
    paths_cfg = cfg.paths or default_paths()
    cfg = cfg.model_copy(update={"paths": paths_cfg})
    prompts = cfg.prompts or DEFAULT_PROMPTS
    links: list[FaultyLink] = []
    security = link_security(cfg, "paths.address" if any(p.address for p in paths_cfg) else "")
    killed: list[str] = []
    with WorkerGroup(security, threads=cfg.threads) as group:
        need = [p for p in paths_cfg if p.address is None]
        workers = group.start([(p.name, worker_model_args(cfg.model, cfg.num_layers)) for p in need])
        launched = {p.name: w for p, w in zip(need, workers, strict=True)}
        try:
            for i, p in enumerate(paths_cfg):
                links.append(FaultyLink(p.address or launched[p.name].address, latency_s=p.latency_s,
                                        drop_prob=1.0 - p.availability, seed=i))
            paths = cfg.access_paths([link.address for link in links])
            client = MultiAccessClient(paths, group.security, cfg.policy, timeout=cfg.timeout_s, cooldown_s=2.0,
                                       max_rounds=4)
            preferred = paths_cfg[rank_paths(paths, cfg.policy, client.request_bytes)[0]].name

            def kill_preferred() -> None:
                group.kill(launched[preferred])
                killed.append(preferred)
                if notify:
                    notify(f"killed the node behind {preferred}")

            killer = _KillAfter(cfg.kill_after if preferred in launched else None, kill_preferred)

            def one(i: int) -> MultiAccessAnswer | AllPathsFailed:
                try:
                    meta = {"prompt": prompts[i % len(prompts)], "max_new_tokens": cfg.max_new_tokens}
                    return client.request("generate", meta, {}, index=i)
                except AllPathsFailed as err:
                    return err
                finally:
                    killer.answered()

            t0 = time.perf_counter()
            try:
                with ThreadPoolExecutor(cfg.concurrency) as pool:
                    results = list(pool.map(one, range(cfg.requests)))
                wall = time.perf_counter() - t0
            finally:
                client.close()
        finally:
            for link in links:
                link.close()
    ok = [r for r in results if not isinstance(r, AllPathsFailed)]
    compute = statistics.median(float(r.reply.meta.get("compute_s", 0.0)) for r in ok) if ok else 0.0
    sim = simulate_multiaccess(paths, cfg.policy, 10_000, client.request_bytes, compute_s=compute, detect_s=0.05)
    return MultiAccessModeReport(cfg.policy, preferred, [p.name for p in paths], results, wall, sim,
                                 killed[0] if killed else None)
