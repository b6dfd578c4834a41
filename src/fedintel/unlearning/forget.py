"""Unlearning on opt-out: remove one client's influence from a finished (or interrupted) run.

Two methods, both writing a new run directory (the original is never modified):

* **exact** (:func:`forget_exact`), retraining from the last checkpoint before the client first took part
  (the SISA idea of Bourtoule et al., "Machine Unlearning", IEEE S&P 2021, applied to rounds instead of
  shards). Opt-out (``federation.exclude_clients``) keeps every other client's schedule, and a round's
  randomness depends only on (seed, round, client), so the recomputed rounds reproduce, bit for bit, the run
  that never had the client. Only rounds ``r0..R`` are retrained, ``r0`` being the client's first round.
* **approximate** (:func:`forget_approximate`): for every round the client was aggregated in, recompute that
  round's aggregate without its stored update (the other updates, same rule, same reference adapter) and
  apply the difference to the final adapter; then train ``recovery_rounds`` more rounds without the client.
  Later rounds started from adapters that carried the client's influence, which the correction does not undo
  (that indirect part is what the recovery rounds wash out); compare FedEraser (Liu et al., IWQoS 2021),
  which calibrates stored updates, and "subtract then recover" baselines (Halimi et al., 2022). It needs the
  run's client updates: ``output.save_client_updates: true``.

A client *took part* in a round when it was asked to train (a training row such as ``accepted``, ``dropped``
or ``train_loss`` in ``metrics.db``, or an event naming it): even a rejected or dropped update shares the
channel with the others on the simulated network, so restarting before its first participation is what makes
the exact method exact.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedintel.aggregation.base import RoundContext
from fedintel.aggregation.factory import build_aggregator
from fedintel.config import ConfigError, ExperimentConfig, dump_config, load_config
from fedintel.experiment import resume_experiment
from fedintel.tracking.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, save_checkpoint
from fedintel.tracking.contributions import contributions_path, load_contributions, save_contributions
from fedintel.tracking.progress import Reporter
from fedintel.tracking.rundir import run_lock
from fedintel.tracking.store import MetricsStore
from fedintel.trust import wrap_aggregator
from fedintel.types import AdapterState

log = logging.getLogger(__name__)

_TRAINED = ("accepted", "dropped", "train_loss", "steps", "staleness")
"""Per-client metrics only a client that was asked to train has (evaluation rows exist for every client)."""


# -- results ---------------------------------------------------------------------------------------
@dataclass
class ForgetResult:
    """What :func:`forget_exact` / :func:`forget_approximate` did and what it cost.

    Costs are client optimizer steps (the work the federation spends) and wall seconds of the rounds
    run; a full retraining without the client costs ``full_retrain_steps`` (every other client's steps in
    rounds ``1..R``, which opt-out leaves unchanged) and ``full_retrain_wall_s`` (the original rounds'
    wall time).
    """

    method: str
    """``exact``, ``approximate``, or ``none`` when the client never took part (nothing was written)."""
    client_id: int
    source_dir: Path
    run_dir: Path | None
    """The unlearned run directory (None for ``none``)."""
    rounds_total: int
    """Rounds of the source run (``R``)."""
    first_round: int | None = None
    """The first round the client took part in."""
    contributed_rounds: list[int] = field(default_factory=list)
    """Rounds whose aggregate included the client's update."""
    restart_round: int | None = None
    """Exact: the checkpoint the retraining started from (rounds after it were recomputed)."""
    scope: str = "run"
    """Exact: ``run`` (every client retrained) or ``cluster`` (only the client's cluster; the others replayed)."""
    retrained_cluster: int | None = None
    """Exact with scope ``cluster``: the cluster that was retrained."""
    scope_note: str = ""
    """Why scope ``auto`` retrained the whole run (empty when it did not have to)."""
    rounds_recomputed: int = 0
    """Exact: ``R - restart_round``; approximate: the recovery rounds."""
    client_steps: int = 0
    """Client optimizer steps spent by the unlearning."""
    full_retrain_steps: int = 0
    wall_s: float = 0.0
    """Wall seconds of the unlearning's training rounds (model loading excluded)."""
    full_retrain_wall_s: float = 0.0
    elapsed_s: float = 0.0
    """Wall seconds of the whole call (model loading, copying and evaluation included)."""
    final: dict[str, float] = field(default_factory=dict)
    """The unlearned run's last round metrics."""

    @property
    def cost_ratio(self) -> float:
        """Client steps of the unlearning over those of a full retraining (0 = free, 1 = as costly)."""
        return self.client_steps / self.full_retrain_steps if self.full_retrain_steps else 0.0


# -- reading the source run ------------------------------------------------------------------------
def _source(run_dir: Path) -> tuple[ExperimentConfig, str]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "metrics.db").is_file():
        raise FileNotFoundError(f"{run_dir} is not a fedintel run directory (config.yaml and metrics.db needed)")
    cfg = load_config(run_dir / "config.yaml")
    with MetricsStore(run_dir / "metrics.db") as store:
        ids = store.run_ids()
    if not ids:
        raise FileNotFoundError(f"{run_dir}/metrics.db holds no run")
    return cfg, run_dir.name if run_dir.name in ids else ids[-1]


def _check_client(cfg: ExperimentConfig, client_id: int) -> None:
    n = cfg.federation.num_clients
    if not 0 <= client_id < n:
        raise ConfigError(f"--client: {client_id} is not a client of this run (ids 0..{n - 1})")


def participation(run_dir: Path, client_id: int) -> tuple[list[int], list[int]]:
    """``(rounds the client took part in, rounds its update was aggregated in)`` from ``metrics.db``."""
    _, run_id = _source(run_dir)
    con = sqlite3.connect(Path(run_dir) / "metrics.db")
    try:
        rows = con.execute(
            f"SELECT round, name, value FROM client_metrics WHERE run_id=? AND client_id=? "
            f"AND name IN ({','.join('?' * len(_TRAINED))}) AND round > 0",
            (run_id, client_id, *_TRAINED),
        ).fetchall()
        events = con.execute(
            "SELECT DISTINCT round FROM events WHERE run_id=? AND client_id=? AND round > 0", (run_id, client_id)
        ).fetchall()
    finally:
        con.close()
    took_part = sorted({r for r, _, _ in rows} | {r for (r,) in events})
    accepted = sorted({r for r, name, v in rows if name == "accepted" and v == 1.0})
    return took_part, accepted


def _steps(db: Path, run_id: str, after: int = 0, exclude: int | None = None) -> int:
    con = sqlite3.connect(db)
    try:
        q = "SELECT COALESCE(SUM(value), 0) FROM client_metrics WHERE run_id=? AND name='steps' AND round>?"
        args: tuple[object, ...] = (run_id, after)
        if exclude is not None:
            q += " AND client_id != ?"
            args += (exclude,)
        return int(con.execute(q, args).fetchone()[0])
    finally:
        con.close()


def _wall(db: Path, run_id: str, after: int = 0) -> float:
    con = sqlite3.connect(db)
    try:
        return float(con.execute(
            "SELECT COALESCE(SUM(value), 0) FROM round_metrics WHERE run_id=? AND name='wall_s' AND round>?",
            (run_id, after),
        ).fetchone()[0])
    finally:
        con.close()


# -- writing the unlearned run ---------------------------------------------------------------------
def _new_dir(run_dir: Path, client_id: int, out_dir: Path | None, suffix: str) -> Path:
    out = Path(out_dir) if out_dir else run_dir.with_name(f"{run_dir.name}-{suffix}-{client_id}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} already exists and is not empty; remove it or choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _copy_metrics(src: Path, src_run_id: str, dst: Path, upto: int, config_yaml: str, name: str,
                  drop_client: int | None = None, drop_rounds: Sequence[int] = ()) -> None:
    """Copy rounds ``0..upto`` of ``src/metrics.db`` into a new ``dst/metrics.db`` under ``dst``'s run id.

    ``drop_client``'s rows and events of ``drop_rounds`` are left out (its training record is forgotten).
    """
    with MetricsStore(dst / "metrics.db") as store:
        store.start_run(dst.name, name, config_yaml)
        con = store.conn
        con.execute("ATTACH DATABASE ? AS src", (str(src / "metrics.db"),))
        drop = ""
        if drop_client is not None and drop_rounds:
            in_rounds = ",".join(str(int(r)) for r in drop_rounds)
            drop = f" AND NOT (COALESCE(client_id, -1) = {int(drop_client)} AND round IN ({in_rounds}))"
        with con:
            con.execute("INSERT INTO main.round_metrics SELECT ?, round, name, value FROM src.round_metrics "
                        "WHERE run_id=? AND round<=?", (dst.name, src_run_id, upto))
            con.execute("INSERT INTO main.client_metrics SELECT ?, round, client_id, name, value FROM "
                        "src.client_metrics WHERE run_id=? AND round<=?" + drop, (dst.name, src_run_id, upto))
            con.execute("INSERT INTO main.events SELECT ?, round, client_id, kind, message FROM src.events "
                        "WHERE run_id=? AND round<=?" + drop,
                        (dst.name, src_run_id, upto))
        con.execute("DETACH DATABASE src")


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _forget_config(cfg: ExperimentConfig, client_id: int, rounds: int | None = None) -> ExperimentConfig:
    fed = cfg.federation.model_copy(update={
        "exclude_clients": sorted({*cfg.federation.exclude_clients, client_id}),
        **({"rounds": rounds} if rounds is not None else {}),
    })
    return ExperimentConfig.model_validate({**cfg.model_dump(by_alias=True), "federation": fed.model_dump()})


def _resume(out: Path, reporter: Reporter | None, scheme_factory: Any = None) -> tuple[dict[str, float], float]:

    t0 = time.perf_counter()
    result = resume_experiment(out, reporter, scheme_factory)
    return result.final, time.perf_counter() - t0


# -- the two methods -------------------------------------------------------------------------------
def forget_exact(
    run_dir: Path, client_id: int, out_dir: Path | None = None, reporter: Reporter | None = None,
    scope: str = "auto",
) -> ForgetResult:
    """Retrain ``run_dir`` without ``client_id`` from the last checkpoint before its first round.

    The new run (default ``RUN_DIR-forget-<id>``) gets the config with the client in
    ``federation.exclude_clients``, the checkpoints and metrics of the rounds before its first participation,
    and is resumed, so rounds ``r0..R`` are recomputed: it ends with the adapter, metrics and checkpoints of a
    run that never had the client (same seed). If the client never took part, nothing is written
    (``method == "none"``). The asynchronous scheme retrains from round 0 (its dispatch order depends on
    which clients are eligible, so opting out changes it from the start).

    ``scope``: ``run`` retrains every client; ``cluster`` retrains only the client's cluster of a clustered
    run and replays the others from the source's checkpoints (:mod:`fedintel.unlearning.cluster_replay`; an error
    says why when that would not be exact); ``auto`` (default) uses ``cluster`` whenever it is exact.
    """
    if scope not in ("auto", "run", "cluster"):
        raise ConfigError(f"--scope: {scope!r} is not one of auto, run, cluster")
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    cfg, run_id = _source(run_dir)
    _check_client(cfg, client_id)
    took_part, accepted = participation(run_dir, client_id)
    rounds_total = cfg.federation.rounds
    full_steps = _steps(run_dir / "metrics.db", run_id, exclude=client_id)
    full_wall = _wall(run_dir / "metrics.db", run_id)
    if not took_part:
        log.info("client %d never took part in %s; nothing to forget", client_id, run_dir)
        return ForgetResult("none", client_id, run_dir, None, rounds_total, full_retrain_steps=full_steps,
                            full_retrain_wall_s=full_wall, elapsed_s=time.perf_counter() - t_start)
    first = took_part[0] if cfg.federation.scheme != "async" else 1
    ckpts = [(r, p) for r, p in list_checkpoints(run_dir) if r < first]
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}/checkpoints has no checkpoint before round {first} to restart from")
    restart = ckpts[-1][0]
    factory, note = None, ""
    if scope != "run":
        from fedintel.unlearning.cluster_replay import ReplayClusteredScheme, per_cluster_blocker

        note = per_cluster_blocker(cfg, run_dir, run_id, restart + 1) or ""
        if note and scope == "cluster":
            raise ConfigError(f"--scope cluster: retraining only the client's cluster would not be exact here: {note}")
        if not note:
            def factory(*args: Any) -> ReplayClusteredScheme:
                return ReplayClusteredScheme(*args, source_dir=run_dir, client_id=client_id)
        else:
            log.info("retraining every cluster: %s", note)
    out = _new_dir(run_dir, client_id, out_dir, "forget")
    new_cfg = _forget_config(cfg, client_id)
    config_yaml = dump_config(new_cfg)
    (out / "config.yaml").write_text(config_yaml)
    for r, path in ckpts:
        _copy_file(path, checkpoint_path(out, r))
    for r in range(1, restart + 1):
        src = contributions_path(run_dir, r)
        if src.is_file():
            _copy_file(src, contributions_path(out, r))
    _copy_metrics(run_dir, run_id, out, restart, config_yaml, new_cfg.name)
    final, _ = _resume(out, reporter, factory)
    db = out / "metrics.db"
    cluster = None
    if factory is not None:
        from fedintel.unlearning.cluster_replay import cluster_of

        cluster = cluster_of(out, client_id)
    return ForgetResult(
        "exact", client_id, run_dir, out, rounds_total, first_round=took_part[0], contributed_rounds=accepted,
        restart_round=restart, rounds_recomputed=rounds_total - restart,
        scope="cluster" if factory is not None else "run", retrained_cluster=cluster, scope_note=note,
        client_steps=_steps(db, out.name, after=restart), full_retrain_steps=full_steps,
        wall_s=_wall(db, out.name, after=restart), full_retrain_wall_s=full_wall,
        elapsed_s=time.perf_counter() - t_start, final=final,
    )


def subtract_contributions(
    run_dir: Path, client_id: int, state: AdapterState, rounds: Sequence[int], cfg: ExperimentConfig
) -> tuple[AdapterState, dict[int, list[dict[str, Any]]]]:
    """``state`` with ``client_id``'s direct contributions removed, and the rewritten per-round records.

    For each round: ``state += aggregate(updates without the client) - aggregate(all updates)``, the rule
    and reference adapter being the round's own (for FedAvg this removes the client's weighted delta and
    re-normalises the others' weights). Summed in float64. A round whose only update was the client's gets a
    zero aggregate.
    """
    aggregator = wrap_aggregator(cfg, build_aggregator(cfg))
    correction = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in state.items()}
    rewritten: dict[int, list[dict[str, Any]]] = {}
    for rnd in rounds:
        records = load_contributions(run_dir, rnd)
        for rec in records:
            others = [u for u in rec["updates"] if u.client_id != client_id]
            if len(others) == len(rec["updates"]):
                continue
            if others:
                without = aggregator.aggregate(others, rec["reference"], RoundContext(rnd))
            else:
                without = {k: torch.zeros_like(v) for k, v in rec["delta"].items()}
            for k in correction:
                correction[k] += without[k].double() - rec["delta"][k].double()
            rec.update(updates=others, delta=without)
        rewritten[rnd] = records
    new_state = {k: (v.double() + correction[k]).to(v.dtype) for k, v in state.items()}
    return new_state, rewritten


def forget_approximate(
    run_dir: Path, client_id: int, recovery_rounds: int = 2, out_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> ForgetResult:
    """Subtract ``client_id``'s stored contributions from the final adapter, then train ``recovery_rounds``
    more rounds without it (default run directory ``RUN_DIR-unlearn-<id>``).

    Needs a FedAvg-scheme run made with ``output.save_client_updates: true``. The new run holds the
    source's metrics (minus the client's training rows), a checkpoint at round ``R`` with the corrected
    adapter, and rounds ``R+1..R+recovery_rounds``; its config has ``federation.rounds = R + recovery_rounds``
    and the client excluded.
    """
    t_start = time.perf_counter()
    if recovery_rounds < 0:
        raise ConfigError(f"--recovery-rounds must be >= 0, got {recovery_rounds}")
    run_dir = Path(run_dir)
    cfg, run_id = _source(run_dir)
    _check_client(cfg, client_id)
    if cfg.federation.scheme != "fedavg":
        raise ConfigError(f"approximate unlearning supports federation.scheme fedavg (this run is "
                          f"{cfg.federation.scheme}); use --method exact")
    if not cfg.output.save_client_updates:
        raise ConfigError("approximate unlearning needs the clients' updates, which this run did not keep "
                          "(output.save_client_updates: true); use --method exact")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds no readable checkpoint")
    last = int(ckpt["round"])
    took_part, accepted = participation(run_dir, client_id)
    accepted = [r for r in accepted if r <= last]
    full_steps = _steps(run_dir / "metrics.db", run_id, exclude=client_id)
    full_wall = _wall(run_dir / "metrics.db", run_id)
    if not accepted:
        log.info("no update of client %d was aggregated in %s; nothing to forget", client_id, run_dir)
        return ForgetResult("none", client_id, run_dir, None, last, first_round=took_part[0] if took_part else None,
                            full_retrain_steps=full_steps, full_retrain_wall_s=full_wall,
                            elapsed_s=time.perf_counter() - t_start)
    state = dict(ckpt["state"])
    state["global"], rewritten = subtract_contributions(run_dir, client_id, state["global"], accepted, cfg)
    out = _new_dir(run_dir, client_id, out_dir, "unlearn")
    new_cfg = _forget_config(cfg, client_id, rounds=last + recovery_rounds)
    config_yaml = dump_config(new_cfg)
    (out / "config.yaml").write_text(config_yaml)
    save_checkpoint(out, last, {"state": state, "scheme": ckpt.get("scheme", "fedavg")})
    for r in range(1, last + 1):
        if r in rewritten:
            save_contributions(out, r, rewritten[r])
        elif contributions_path(run_dir, r).is_file():
            _copy_file(contributions_path(run_dir, r), contributions_path(out, r))
    _copy_metrics(run_dir, run_id, out, last, config_yaml, new_cfg.name, drop_client=client_id, drop_rounds=took_part)
    final, _ = _resume(out, reporter)
    db = out / "metrics.db"
    return ForgetResult(
        "approximate", client_id, run_dir, out, last, first_round=took_part[0], contributed_rounds=accepted,
        rounds_recomputed=recovery_rounds, client_steps=_steps(db, out.name, after=last),
        full_retrain_steps=full_steps, wall_s=_wall(db, out.name, after=last), full_retrain_wall_s=full_wall,
        elapsed_s=time.perf_counter() - t_start, final=final,
    )


def forget(run_dir: Path, client_id: int, method: str = "exact", **kwargs: Any) -> ForgetResult:
    """Dispatch to :func:`forget_exact` or :func:`forget_approximate` (``method`` ``exact|approximate``).

    Holds ``run_dir``'s lock while it reads the run, so no ``run``/``resume`` of it interleaves.
    """
    if method not in ("exact", "approximate"):
        raise ConfigError(f"--method: {method!r} is not one of exact, approximate")
    with run_lock(Path(run_dir), "forget"):
        if method == "exact":
            kwargs.pop("recovery_rounds", None)
            return forget_exact(run_dir, client_id, **kwargs)
        kwargs.pop("scope", None)
        return forget_approximate(run_dir, client_id, **kwargs)
