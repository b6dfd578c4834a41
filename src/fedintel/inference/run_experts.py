"""A finished run's adapters as expert devices: federated fine-tuning (paper section III-B) feeding
collaborative reasoning (section IV-A-1).

A clustered run exports one adapter per cluster (``cluster_<k>``), a hierarchical run one per edge server
(``edge_<e>``) beside the cloud's ``global``; ``adapters/clients.json`` says which one each client uses.
Routing needs each expert's domain centroid. Each client computes it from its own training texts and
sends only the sum of their MiniLM embeddings and their count (:class:`EmbeddingStats`); an expert's
centroid is the sum over its clients. The run's data split is rebuilt from its ``config.yaml`` (no model
or tokenizer needed), so the queries are the held-out rows of each domain that no client trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedintel.inference.embedding import Encoder
from fedintel.inference.experts import EmbeddingStats

if TYPE_CHECKING:
    from fedintel.config import ExperimentConfig
    from fedintel.data.federated import Partition

log = logging.getLogger(__name__)

EXPERT_ADAPTER = re.compile(r"^(cluster|edge)_(\d+)$")


class RunExpertsError(ValueError):
    """The run cannot serve as experts; the message says why and what would."""


@dataclass(frozen=True)
class Query:
    """A held-out row: ``route_text`` is what a user sends (an instruction row's prompt, else the text),
    ``score_text`` what the experts' loss is measured on (the whole row)."""

    route_text: str
    score_text: str
    domain: str


@dataclass
class RunExperts:
    """What ``fedintel infer experts --from-run`` serves and measures."""

    run_dir: Path
    model: str
    num_layers: int | None
    experts: dict[str, Path]
    """Adapter name -> PEFT directory, for every expert some client uses."""
    stats: dict[str, EmbeddingStats]
    """Adapter name -> the sum of its clients' statistics (the routing centroid's source)."""
    domain_expert: dict[str, str]
    """Domain -> the expert that most of that domain's training rows went into."""
    queries: list[Query]
    global_adapter: Path | None
    """The run's own ``global`` adapter, if it exported one (hierarchical runs do)."""


def _expert_order(name: str) -> tuple[str, int]:
    m = EXPERT_ADAPTER.match(name)
    assert m is not None
    return m.group(1), int(m.group(2))


@dataclass
class ExpertRun:
    """A finished run's config, its rebuilt data split, and which clients use which expert adapter."""

    run_dir: Path
    cfg: ExperimentConfig
    part: Partition
    adapters: Path
    users: dict[str, list[int]]
    """Expert adapter name -> the clients that use it, in expert order."""
    mapping: dict[int, str]


def open_expert_run(run_dir: str | Path) -> ExpertRun:
    """Check that ``run_dir`` is a finished clustered or hierarchical causal-LM run with two experts or more."""
    from fedintel.config import ConfigError, load_config
    from fedintel.data.federated import plan_partition
    from fedintel.tracking.export import CLIENT_MAP, read_client_map

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunExpertsError(f"from_run: {run_dir} is not a fedintel run directory (no config.yaml)")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise RunExpertsError(f"from_run: {run_dir}/config.yaml: {err}") from None
    if cfg.model.task != "causal_lm":
        raise RunExpertsError(f"from_run: {run_dir} trained a {cfg.model.task} model; experts answer queries, "
                              "so they need a causal_lm run")
    adapters = run_dir / "adapters"
    mapping_path = adapters / CLIENT_MAP
    try:
        mapping = read_client_map(run_dir)
    except FileNotFoundError:
        raise RunExpertsError(f"from_run: {mapping_path} is missing: the run saved no adapters "
                              "(output.save_adapter: false, or it has not finished)") from None
    exported = sorted(p.name for p in adapters.iterdir() if (p / "adapter_config.json").is_file())
    candidates = [n for n in exported if EXPERT_ADAPTER.match(n)]
    if len(candidates) < 2:
        raise RunExpertsError(f"from_run: {run_dir} exported {exported or 'no adapters'}; experts need a clustered "
                              "run (cluster_<k> adapters) or a hierarchical run (edge_<e> adapters) with at least two")
    users: dict[str, list[int]] = {}
    for cid, name in sorted(mapping.items()):
        if name in candidates:
            users.setdefault(name, []).append(cid)
    unused = sorted(set(candidates) - set(users))
    if unused:
        log.warning("adapters %s serve no client of the run: not routed to", unused)
    if len(users) < 2:
        raise RunExpertsError(f"from_run: only {sorted(users)} serves clients in {mapping_path}; routing needs two "
                              "experts")
    part = plan_partition(cfg.data, cfg.model.task, cfg.federation.num_clients, cfg.federation.seed)
    if len(part.client_train) != len(mapping):
        raise RunExpertsError(f"from_run: {mapping_path} lists {len(mapping)} clients but the config builds "
                              f"{len(part.client_train)}: the run directory was changed after the run")
    users = {n: users[n] for n in sorted(users, key=_expert_order)}
    return ExpertRun(run_dir, cfg, part, adapters, users, mapping)


STATS_DIR = "routing"
"""``RUN_DIR/routing/``: the experts' aggregated routing statistics, kept so later calls skip the encoder pass."""


def _stats_file(run_dir: Path, encoder: Encoder) -> Path:
    from fedintel.tracking.export import CLIENT_MAP

    # the statistics depend on the data split (config.yaml), who uses which expert (clients.json) and the encoder
    key = hashlib.sha256()
    for part in ((run_dir / "config.yaml").read_bytes(), (run_dir / "adapters" / CLIENT_MAP).read_bytes(),
                 f"{encoder.name}|{encoder.max_length}".encode()):
        key.update(hashlib.sha256(part).digest())
    return run_dir / STATS_DIR / f"stats-{key.hexdigest()[:16]}.safetensors"


def _read_stats(path: Path, names: list[str]) -> dict[str, EmbeddingStats] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(path.read_bytes())  # not load_file: its tensors map the file, which may be rewritten later
    except (OSError, SafetensorError) as err:
        if path.exists():
            log.warning("routing statistics %s unreadable (%s): computing them again", path, err)
        return None
    if sorted(k.rsplit(".", 1)[0] for k in tensors) != sorted(2 * names):
        log.warning("routing statistics %s do not list the experts %s: computing them again", path, names)
        return None
    return {n: EmbeddingStats(tensors[f"{n}.total"], int(tensors[f"{n}.count"])) for n in names}


def _write_stats(path: Path, stats: dict[str, EmbeddingStats]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, s in stats.items():
        tensors[f"{name}.total"] = s.total.contiguous()
        tensors[f"{name}.count"] = torch.tensor(s.count)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        save_file(tensors, tmp)
        tmp.replace(path)  # atomic: a reader never sees half a file
    except OSError as err:  # a read-only run directory still serves; it only recomputes next time
        log.warning("could not keep the routing statistics in %s: %s", path.parent, err)


def expert_statistics(run: ExpertRun, encoder: Encoder) -> dict[str, EmbeddingStats]:
    """Expert adapter name -> the sum of its clients' statistics (computed client by client on the first call,
    then kept in ``RUN_DIR/routing/`` for later ones)."""
    path = _stats_file(run.run_dir, encoder)
    names = list(run.users)
    cached = _read_stats(path, names)
    if cached is not None:
        return cached
    stats: dict[str, EmbeddingStats] = {}
    for name in names:
        for cid in run.users[name]:
            # computed where the client's data is; only the sum and the count reach the aggregator
            texts = [run.part.text(i, run.cfg.data) for i in run.part.client_train[cid]]
            client = EmbeddingStats.of(encoder, texts)
            stats[name] = stats[name] + client if name in stats else client
    _write_stats(path, stats)
    return stats


def load_run_experts(run_dir: str | Path, encoder: Encoder) -> RunExperts:
    """The experts of finished run ``run_dir``, with routing statistics computed client by client."""
    run = open_expert_run(run_dir)
    run_dir, cfg, part = run.run_dir, run.cfg, run.part
    if cfg.peft.method != "lora":
        raise RunExpertsError(f"from_run: {run_dir} trained {cfg.peft.method} adapters; an expert device merges "
                              "its adapter into the model, which PEFT can do for LoRA only")
    stats = expert_statistics(run, encoder)

    rows_per_expert: dict[str, Counter[str]] = {}
    for cid, name in run.mapping.items():
        if name in run.users:
            for i in part.client_train[cid]:
                rows_per_expert.setdefault(part.domains[i], Counter())[name] += 1
    domain_expert = {d: c.most_common(1)[0][0] for d, c in sorted(rows_per_expert.items())}

    queries = []
    for i in part.held:
        route = part.text(i, cfg.data)
        score = f"{route}\n{part.rows[i][cfg.data.response_field]}" if cfg.data.instruction else route
        queries.append(Query(route, score, part.domains[i]))
    glob = run.adapters / "global"
    return RunExperts(run_dir, cfg.model.name, cfg.model.num_layers, {n: run.adapters / n for n in run.users}, stats,
                      domain_expert, queries, glob if (glob / "adapter_config.json").is_file() else None)


def resolve_baseline(path: str | Path, experts: RunExperts) -> Path:
    """The adapter to compare the experts with: a run directory's ``global`` adapter, or a PEFT directory.

    Its base model must be the experts' (PEFT records it in ``adapter_config.json``)."""
    path = Path(path)
    adapter = path / "adapters" / "global" if (path / "adapters" / "global").is_dir() else path
    if not (adapter / "adapter_config.json").is_file():
        raise RunExpertsError(f"baseline: {path} is neither a run directory with adapters/global nor a PEFT adapter "
                              "directory (adapter_config.json)")

    def base_of(p: Path) -> str:
        return str(json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path"))

    ours = base_of(next(iter(experts.experts.values())))
    if base_of(adapter) != ours:
        raise RunExpertsError(f"baseline: {adapter} adapts {base_of(adapter)}, the experts adapt {ours}")
    if (path / "config.yaml").is_file():  # a run: its model must also keep the same layers
        from fedintel.config import load_config

        model = load_config(path / "config.yaml").model
        if (model.name, model.num_layers) != (experts.model, experts.num_layers):
            raise RunExpertsError(f"baseline: {path} trained {model.name} with num_layers={model.num_layers}, the "
                                  f"experts {experts.model} with num_layers={experts.num_layers}")
    return adapter
