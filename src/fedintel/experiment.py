"""Run, resume and summarise an experiment: the glue between config, world, scheme and tracking."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedintel.aggregation.factory import build_aggregator
from fedintel.config import ConfigError, ExperimentConfig, dump_config, load_config
from fedintel.engines.base import Engine
from fedintel.engines.batched import BatchedEngine
from fedintel.engines.local import LocalEngine
from fedintel.engines.parallel import ParallelEngine
from fedintel.errors import RunFailed
from fedintel.privacy.budget import PrivacyLedger
from fedintel.privacy.secure_aggregator import SecureAggregator
from fedintel.runtime import hardware
from fedintel.schemes.base import Scheme
from fedintel.schemes.registry import scheme_class as registered_scheme
from fedintel.tracking.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from fedintel.tracking.contributions import save_contributions
from fedintel.tracking.export import export_adapters
from fedintel.tracking.plots import OVERVIEW, overview_figure, save
from fedintel.tracking.progress import NullReporter, Reporter
from fedintel.tracking.rundir import RunDirError, run_lock
from fedintel.tracking.store import MetricsStore
from fedintel.training.client import TrainingDiverged
from fedintel.trust import build_client_mods, clients_unmask, wrap_aggregator
from fedintel.world import World, build_world

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    rounds: list[dict[str, float]]
    adapters: dict[str, Path]
    status: str
    overview: Path | None = None
    """The run's overview figure (``output.overview``), once it finished."""

    @property
    def final(self) -> dict[str, float]:
        return self.rounds[-1] if self.rounds else {}


def new_run_dir(cfg: ExperimentConfig) -> Path:
    base = Path(cfg.output.dir)
    name = cfg.output.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = base / name
    n = 1
    while path.exists() and cfg.output.run_name is None:
        n += 1
        path = base / f"{name}-{n}"
    return path


_NOT_IN_STATE = {"name", "runtime", "engine", "output", "eval"}  # runtime: a run may move hardware
_FEDERATION_NOT_IN_STATE = {"rounds", "exclude_clients", "on_client_diverged"}


_HASHED_DEFAULTS: dict[str, dict[str, Any]] = {
    "aggregation": {"rule": "fedavg", "weighted": True, "trim_beta": 0.1, "num_malicious": 0, "multi_krum_m": None,
                    "max_norm": 1.0, "snr_db": 20.0, "power_control": "truncated_inversion", "lora": "naive"},
    "clustering": {"num_clusters": 4, "method": "given", "algorithm": "agglomerative", "share_beta": 0.0,
                   "share_every": 1, "shared_keys": [], "ifca_eval_batches": 2},
    "peft": {"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": None,
             "num_virtual_tokens": 16, "client_ranks": None},
}
"""Frozen: before the registries these sections held every rule's / method's knobs, and checkpoints hashed
them all. Hashing the section over these defaults keeps the hashes of existing checkpoints (never edit it when
adding an extension; an extension's own knobs simply join the hash)."""


def config_hash(cfg: ExperimentConfig) -> str:
    """SHA-256 of the settings a checkpoint's state depends on.

    Left out: where and how long it runs (``rounds`` may be extended, ``exclude_clients`` set by ``forget``),
    evaluation and output settings; everything else must match for a checkpoint to be resumed.
    """
    raw = cfg.model_dump(mode="json", by_alias=True)
    for section, defaults in _HASHED_DEFAULTS.items():
        raw[section] = {**defaults, **raw[section]}
    kept = {k: v for k, v in raw.items() if k not in _NOT_IN_STATE}
    kept["federation"] = {k: v for k, v in raw["federation"].items() if k not in _FEDERATION_NOT_IN_STATE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _check_resumable(ckpt: dict[str, Any], scheme: Scheme, cfg: ExperimentConfig, run_dir: Path) -> None:
    if ckpt.get("scheme") not in (None, scheme.name):
        raise RunDirError(f"{run_dir}: the checkpoint is of scheme {ckpt.get('scheme')!r} but the run's config asks "
                          f"for {scheme.name!r} (federation.scheme); refusing to resume")
    if "config_hash" in ckpt and ckpt["config_hash"] != config_hash(cfg):
        raise RunDirError(f"{run_dir}: the checkpoint was written with other settings than {run_dir}/config.yaml "
                          "(config hash differs); restore the original config.yaml or start a new run")


EngineFactory = Callable[[World], Engine]
SchemeFactory = Callable[..., Scheme]
"""Called as ``factory(world, engine, aggregator, reporter)`` instead of the config's scheme class."""


def build_scheme(
    cfg: ExperimentConfig, world: World, reporter: Reporter, engine_factory: EngineFactory | None = None,
    scheme_factory: SchemeFactory | None = None,
) -> Scheme:
    """The scheme of ``cfg`` with its engine and aggregator, the privacy wrappers and client mods in place
    (:mod:`fedintel.trust`). An engine from ``engine_factory`` brings its own client mods."""
    aggregator = wrap_aggregator(cfg, build_aggregator(cfg))
    mods = build_client_mods(cfg)
    if engine_factory:
        engine = engine_factory(world)
    elif cfg.runtime.num_workers > 1:
        engine = ParallelEngine(cfg, mods)
    elif cfg.runtime.client_batching != "off":
        engine = BatchedEngine(world, mods)
    else:
        engine = LocalEngine(world, mods)
    remote = clients_unmask(cfg, engine)
    if remote is not None and isinstance(aggregator, SecureAggregator):
        aggregator.remote = remote  # the clients mask; only the sum is unmasked here
    return (scheme_factory or scheme_class(cfg))(world, engine, aggregator, reporter)


def scheme_class(cfg: ExperimentConfig) -> type[Scheme]:
    """The scheme ``cfg`` asks for; async on the wall clock is the Flower push/pull variant."""
    if cfg.federation.scheme == "async" and cfg.asynchronous.clock == "wall":
        from fedintel.engines.flower.wallclock import WallClockAsyncScheme  # needs flwr: imported on demand

        return WallClockAsyncScheme
    return registered_scheme(cfg.federation.scheme)


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    reporter: Reporter | None = None,
    *,
    resume: bool = False,
    stop_after_round: int | None = None,
    engine_factory: EngineFactory | None = None,
    scheme_factory: SchemeFactory | None = None,
) -> RunResult:
    """Run ``cfg`` to the end (or resume it in ``run_dir``) and return its per-round metrics.

    ``engine_factory`` chooses where clients train (default: :class:`LocalEngine`, in this process).
    ``scheme_factory`` replaces the config's scheme class (per-cluster unlearning replays clusters with it).
    ``stop_after_round`` ends the process's work early (as if killed) for testing resumption.
    """
    reporter = reporter or NullReporter()
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    if not resume and (run_dir / "metrics.db").exists():
        raise ConfigError(f"output: {run_dir} already holds a run; use `fedintel resume {run_dir}` or a new run_name")
    # The world (device, model, data) is built before anything is written: bad input leaves no trace.
    torch.manual_seed(cfg.federation.seed)
    world = build_world(cfg)
    with run_lock(run_dir, "resume" if resume else "run"):
        return _run_locked(cfg, world, run_dir, reporter, resume, stop_after_round, engine_factory, scheme_factory)


def _run_locked(
    cfg: ExperimentConfig, world: World, run_dir: Path, reporter: Reporter, resume: bool,
    stop_after_round: int | None, engine_factory: EngineFactory | None, scheme_factory: SchemeFactory | None,
) -> RunResult:
    config_yaml = dump_config(cfg)
    if not resume:
        if (run_dir / "metrics.db").exists():
            raise ConfigError(f"output: {run_dir} already holds a run; use `fedintel resume {run_dir}` or a new run_name")
        (run_dir / "config.yaml").write_text(config_yaml)
    run_id = run_dir.name
    store = MetricsStore(run_dir / "metrics.db")
    try:
        scheme = build_scheme(cfg, world, reporter, engine_factory, scheme_factory)
        if cfg.output.save_client_updates:  # kept per round for approximate unlearning
            scheme.contributions = []
        state: dict[str, Any]
        ckpt = latest_checkpoint(run_dir) if resume else None
        if resume and ckpt is None and (list_checkpoints(run_dir) or any(r["round"] > 0 for r in store.rounds(run_id))):
            raise RunDirError(f"{run_dir}/checkpoints holds no readable checkpoint; nothing was changed or deleted "
                              "(restore a checkpoint file, or start a new run)")
        if ckpt is not None:
            _check_resumable(ckpt, scheme, cfg, run_dir)
        store.start_run(run_id, cfg.name, config_yaml)  # after the checks: a refused resume changes nothing
        store.set_info(run_id, "hardware", hardware(world.runtime))
        if ckpt is not None:
            first = int(ckpt["round"]) + 1
            state = ckpt["state"]
            log.info("resuming %s after round %d", run_dir, first - 1)
        else:
            first, state = 1, scheme.initial_state()
            if cfg.eval.at_start:
                store.log_round(run_id, 0, scheme.initial_record(state).metrics)
            save_checkpoint(run_dir, 0, {"state": state, "scheme": scheme.name, "config_hash": config_hash(cfg)})
        store.truncate_after(run_id, first - 1)  # rounds logged after the checkpoint are recomputed
        # epsilon so far (each client's DP releases, where it is accounted by participation, from the store)
        ledger = PrivacyLedger(cfg, lambda: store.client_rows(run_id))
        reporter.start(cfg.federation.rounds, first, cfg.federation.clients_per_round)
        try:
            for rnd in range(first, cfg.federation.rounds + 1):
                t0 = time.perf_counter()
                try:
                    state, record = scheme.run_round(rnd, state)
                except TrainingDiverged as err:
                    store.set_status(run_id, "diverged", str(err))
                    raise RunFailed(
                        f"round {rnd}: {err}. The run stopped; the last good checkpoint is kept in {run_dir}/checkpoints"
                    ) from None
                record.metrics["wall_s"] = time.perf_counter() - t0
                spent = ledger.account(rnd, record.aggregations, record.uploads)
                for cid, row in spent.clients.items():
                    record.clients.setdefault(cid, {}).update(row)
                record.metrics.update(spent.metrics)
                if scheme.contributions is not None:  # output.save_client_updates
                    save_contributions(run_dir, rnd, scheme.contributions)
                    scheme.contributions = []
                store.log_round(run_id, rnd, record.metrics, record.clients, record.events)
                if rnd % cfg.output.checkpoint_every == 0 or rnd == cfg.federation.rounds:
                    save_checkpoint(run_dir, rnd, {"state": state, "scheme": scheme.name, "config_hash": config_hash(cfg)})
                reporter.round_done(rnd, record.metrics)
                if stop_after_round is not None and rnd >= stop_after_round:
                    return RunResult(run_dir, run_id, store.rounds(run_id), {}, "interrupted")
        finally:
            reporter.stop()
            scheme.engine.close()
        adapters = (export_adapters(world, scheme.final_adapters(state), run_dir, scheme.client_adapters(state))
                    if cfg.output.save_adapter else {})
        rounds = store.rounds(run_id)
        overview = None
        if cfg.output.overview and rounds:
            overview = save(overview_figure(rounds, run_id), run_dir / "plots" / OVERVIEW)
        summary: dict[str, Any] = {"run_id": run_id, "final": rounds[-1] if rounds else {}}
        if overview is not None:
            summary["overview"] = str(overview.relative_to(run_dir))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        store.set_status(run_id, "finished")
        return RunResult(run_dir, run_id, rounds, adapters, "finished", overview)
    finally:
        store.close()


def resume_experiment(
    run_dir: Path, reporter: Reporter | None = None, scheme_factory: SchemeFactory | None = None,
    runtime_overrides: list[str] | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint with the config it was started with.

    ``runtime_overrides`` (``runtime.KEY=VALUE``) move the run to other hardware: checkpoints are
    device-independent, so a run started on a GPU continues on a CPU and the other way round.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a fedintel run directory (no config.yaml)")
    bad = [o for o in runtime_overrides or [] if not o.startswith("runtime.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: a resumed run keeps its experiment; only runtime.* settings "
                          "(device, dtype, threads) may change")
    cfg = load_config(run_dir / "config.yaml", runtime_overrides)
    return run_experiment(cfg, run_dir, reporter, resume=True, scheme_factory=scheme_factory)
