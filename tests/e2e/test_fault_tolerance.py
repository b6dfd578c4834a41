"""Fault tolerance: faulty clients are dropped without losing the round; a server killed with SIGKILL at
random points, again and again, resumes to exactly the uninterrupted run (no lost or double-counted update)."""

import dataclasses
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import torch

from fedintel.config import dump_config
from fedintel.experiment import resume_experiment, run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint, list_checkpoints
from fedintel.training.mods import ClientMods

CRASH, NAN, SHAPE, SLOW, HONEST = range(5)


def _inject_faults(monkeypatch):
    """Client 0 crashes inside training (an out-of-vocabulary token id), 1 sends NaN, 2 a wrongly shaped
    tensor, 3 runs on a device so slow that it misses the round deadline (a timeout); 4 is honest."""
    from fedintel import experiment
    from fedintel.engines.local import LocalEngine

    real_build = experiment.build_world

    def build_world(cfg):
        world = real_build(cfg)
        world.data.clients[CRASH].train.input_ids[0] = [10**9] * 4
        # a device so slow it misses the deadline (a self-reported 1e21 FLOPs would be rejected as impossible)
        prof = world.network.profiles[SLOW]
        world.network.profiles[SLOW] = dataclasses.replace(prof, flops_per_s=1e-3)
        return world

    def garbage(update, job):
        key = sorted(update.delta)[0]
        if update.client_id == NAN:
            update.delta[key] = torch.full_like(update.delta[key], float("nan"))
        elif update.client_id == SHAPE:
            update.delta[key] = update.delta[key][:-1]
        return update

    real_init = LocalEngine.__init__
    monkeypatch.setattr(experiment, "build_world", build_world)
    monkeypatch.setattr(LocalEngine, "__init__", lambda self, world, mods=None: real_init(self, world, ClientMods(update=(garbage,))))


def test_crashing_garbage_and_late_clients_are_dropped_and_the_round_goes_on(tiny_cfg, tmp_path, monkeypatch):
    sections = {"federation": {"num_clients": 5, "clients_per_round": 5}, "network": {"deadline_s": 600.0},
                "data": {"samples_per_client": 8}, "threads": 1}
    clean = run_experiment(tiny_cfg(**{**sections, "federation": {**sections["federation"],
                                                                  "exclude_clients": [CRASH, NAN, SHAPE, SLOW]}}),
                           tmp_path / "honest_only")
    _inject_faults(monkeypatch)
    res = run_experiment(tiny_cfg(**sections), tmp_path / "faulty")
    assert res.status == "finished" and len(res.rounds) == 3
    for r in res.rounds[1:]:
        assert r["clients_accepted"] == 1 and r["clients_rejected"] == 3 and r["dropped_deadline"] == 1
        assert math.isfinite(r["eval_loss"])
    con = sqlite3.connect(tmp_path / "faulty" / "metrics.db")
    events = con.execute("SELECT round, client_id, kind, message FROM events ORDER BY round, client_id").fetchall()
    for rnd in (1, 2):
        mine = [(c, k, m) for r, c, k, m in events if r == rnd]
        assert [(c, k) for c, k, _ in mine] == [(CRASH, "failed"), (NAN, "rejected"), (SHAPE, "rejected"),
                                                 (SLOW, "dropped")]
        assert "IndexError" in mine[0][2] and "NaN" in mine[1][2] and "shape" in mine[2][2]
        accepted = dict(con.execute("SELECT client_id, value FROM client_metrics WHERE round=? AND name='accepted'",
                                    (rnd,)).fetchall())
        assert accepted == {CRASH: 0.0, NAN: 0.0, SHAPE: 0.0, HONEST: 1.0}  # the late client never arrived
    # only the honest update was averaged: the same adapter as a run where the faulty clients opted out
    a, b = latest_checkpoint(tmp_path / "faulty")["state"]["global"], latest_checkpoint(clean.run_dir)["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _table(run_dir, query):
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_sigkill_at_random_points_repeatedly_then_resume_matches_the_uninterrupted_run(tiny_cfg, tmp_path):
    # a noisy attacker and a norm bound make rejected-update events, so duplicated events would show
    cfg = tiny_cfg(federation={"rounds": 6, "max_update_norm": 5.0}, threads=1,
                   attack={"kind": "noise", "fraction": 0.25, "noise_std": 1.0},
                   output={"save_client_updates": True})
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(dump_config(cfg))
    run_dir = tmp_path / "killed"
    seed = int(os.environ.get("FEDINTEL_KILL_SEED", int.from_bytes(os.urandom(4), "little")))
    rng = random.Random(seed)  # new kill points every time; FEDINTEL_KILL_SEED=<seed> repeats a failure
    targets = sorted(rng.sample(range(1, 6), 3))  # kill once this many checkpoints exist (of 7) ...
    delays = [rng.uniform(0.0, 0.4) for _ in targets]  # ... plus a random fraction of a round
    print(f"FEDINTEL_KILL_SEED={seed}: kill points (checkpoints, delay s) {list(zip(targets, delays, strict=True))}")
    cmd = [sys.executable, "-m", "fedintel.cli", "run", str(cfg_path), "--run-dir", str(run_dir), "-q"]
    kills = 0
    for target, delay in zip(targets, delays, strict=True):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(list_checkpoints(run_dir)) < target:
            time.sleep(0.02)
        # a random fraction of a round: never past the next checkpoint (a tiny round can be shorter than delay)
        until = time.time() + delay
        while time.time() < until and proc.poll() is None and len(list_checkpoints(run_dir)) <= target:
            time.sleep(0.01)
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        cmd = [sys.executable, "-m", "fedintel.cli", "resume", str(run_dir), "-q"]
    assert kills == 3, "the run finished before it could be killed three times"
    assert len(list_checkpoints(run_dir)) < 7
    resumed = resume_experiment(run_dir)
    full = run_experiment(cfg, tmp_path / "full")
    assert resumed.status == "finished"
    # every round once, with the same numbers (wall time aside)
    q_rounds = "SELECT round, name, value FROM round_metrics WHERE name != 'wall_s' ORDER BY round, name"
    assert _table(run_dir, q_rounds) == _table(full.run_dir, q_rounds)
    q_clients = "SELECT round, client_id, name, value FROM client_metrics ORDER BY round, client_id, name"
    assert _table(run_dir, q_clients) == _table(full.run_dir, q_clients)
    q_events = "SELECT round, client_id, kind, message FROM events ORDER BY round, client_id, kind"
    events = _table(run_dir, q_events)
    assert events == _table(full.run_dir, q_events) and any(k == "rejected" for _, _, k, _ in events)
    per_round = _table(run_dir, "SELECT round, COUNT(*) FROM client_metrics WHERE name='accepted' GROUP BY round")
    assert per_round == [(r, 3) for r in range(1, 7)]  # the clients of each round, no more, no fewer
    # the cumulative counters in the checkpointed state did not double count a re-run round
    assert [r["cum_bytes_up"] for r in resumed.rounds] == [r["cum_bytes_up"] for r in full.rounds]
    a, b = latest_checkpoint(run_dir), latest_checkpoint(full.run_dir)
    assert a["round"] == b["round"] == 6
    assert all(torch.equal(a["state"]["global"][k], b["state"]["global"][k]) for k in b["state"]["global"])
    assert [r for r, _ in list_checkpoints(run_dir)] == list(range(7))
    assert sorted(p.name for p in (run_dir / "client_updates").iterdir() if p.suffix == ".pt") == [
        f"round_{r:05d}.pt" for r in range(1, 7)]
