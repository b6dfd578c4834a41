"""End-to-end runs on a tiny model and real text: training, tracking, export, resume, bad updates."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from PIL import Image

from fedintel.config import ModelConfig, dump_config
from fedintel.experiment import RunFailed, resume_experiment, run_experiment
from fedintel.models.loader import load_base_model
from fedintel.tracking.checkpoint import latest_checkpoint, list_checkpoints
from fedintel.tracking.plots import plot_run
from fedintel.training.evaluate import evaluate
from fedintel.types import ClientFailure


def test_two_round_run_learns_tracks_and_exports(tiny_cfg, tmp_path):
    cfg = tiny_cfg(output={"overview": True})
    res = run_experiment(cfg, tmp_path / "run")
    assert res.status == "finished" and len(res.rounds) == 3  # round 0 is the untrained baseline
    r0, r1, r2 = res.rounds
    assert r2["eval_loss"] < r1["eval_loss"] < r0["eval_loss"]  # the adapter learns
    assert r1["eval_perplexity"] == pytest.approx(math.exp(r1["eval_loss"]))
    assert r1["clients_accepted"] == 3 and r1["clients_rejected"] == 0
    # the store is plain SQLite a user can query
    con = sqlite3.connect(tmp_path / "run" / "metrics.db")
    rows = con.execute("SELECT round, value FROM round_metrics WHERE name='eval_loss' ORDER BY round").fetchall()
    assert [r for r, _ in rows] == [0, 1, 2]
    per_client = con.execute("SELECT COUNT(DISTINCT client_id) FROM client_metrics WHERE name='bytes_up'").fetchone()[0]
    assert per_client >= 3
    bytes_up = con.execute("SELECT value FROM client_metrics WHERE name='bytes_up' LIMIT 1").fetchone()[0]
    assert bytes_up == 3584 * 4  # tiny-llama LoRA r=8 on q,v: 3584 fp32 numbers
    # a checkpoint per round (plus the initial one), the config, plots
    assert [r for r, _ in list_checkpoints(tmp_path / "run")] == [0, 1, 2]
    assert (tmp_path / "run" / "config.yaml").read_text() == dump_config(cfg)
    assert {p.name for p in plot_run(tmp_path / "run")} >= {"overview.png", "eval_loss.png", "train_loss.png"}
    # the finished run drew its overview itself (one figure that fits on a screen) and lists it in its summary
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["overview"] == "plots/overview.png" and res.overview == tmp_path / "run" / "plots" / "overview.png"
    width, height = Image.open(res.overview).size
    assert 800 <= width <= 1400 and 400 <= height <= 800


def test_exported_adapter_loads_with_peft_and_gives_the_same_loss(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"rounds": 1})
    res = run_experiment(cfg, tmp_path / "run")
    base = load_base_model(ModelConfig(name="tiny-llama"))
    model = PeftModel.from_pretrained(base.model, str(res.adapters["global"]))
    from fedintel.world import build_world

    world = build_world(cfg)
    metrics = evaluate(model, world.data.global_eval, task="causal_lm", pad_id=world.pad_id, max_samples=8)
    assert metrics["loss"] == pytest.approx(res.rounds[-1]["eval_loss"], rel=1e-5)
    fresh = load_base_model(ModelConfig(name="tiny-llama")).model  # PEFT injected the adapter into base.model
    untrained = evaluate(fresh, world.data.global_eval, task="causal_lm", pad_id=world.pad_id, max_samples=8)
    assert untrained["loss"] != pytest.approx(metrics["loss"], rel=1e-6)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_tuning_run(tiny_cfg, tmp_path, method):
    res = run_experiment(tiny_cfg(peft={"method": method, "num_virtual_tokens": 4}, federation={"lr": 0.05}), tmp_path / method)
    assert res.rounds[-1]["eval_loss"] < res.rounds[0]["eval_loss"]
    assert (res.adapters["global"] / "adapter_config.json").is_file()


def test_classification_on_real_sentiment_reports_accuracy(tiny_cfg, tmp_path):
    cfg = tiny_cfg(model={"name": "tiny-bert", "task": "classification"}, data={"dataset": "vader"})
    res = run_experiment(cfg, tmp_path / "cls")
    assert 0.0 <= res.rounds[-1]["eval_accuracy"] <= 1.0
    assert "client_eval_accuracy" in res.rounds[-1]


def test_resume_after_interruption_gives_identical_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"rounds": 3})
    full = run_experiment(cfg, tmp_path / "full")
    part = run_experiment(cfg, tmp_path / "part", stop_after_round=1)
    assert part.status == "interrupted"
    resumed = resume_experiment(tmp_path / "part")
    assert [r["eval_loss"] for r in resumed.rounds] == [r["eval_loss"] for r in full.rounds]
    assert [r.get("train_loss") for r in resumed.rounds] == [r.get("train_loss") for r in full.rounds]


@pytest.mark.slow  # test_fault_tolerance.py SIGKILLs a run three times at random points in make test
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"rounds": 4})
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(dump_config(cfg))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fedintel.cli", "run", str(cfg_path), "--run-dir", str(run_dir), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list_checkpoints(run_dir)) < 3:  # round 0, 1 and 2 written
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list_checkpoints(run_dir)) < 5, "the run finished before it could be killed"
    resumed = resume_experiment(run_dir)
    full = run_experiment(cfg, tmp_path / "full")
    assert [r["eval_loss"] for r in resumed.rounds] == [r["eval_loss"] for r in full.rounds]
    assert len(resumed.rounds) == 5


def test_corrupt_client_update_is_rejected_not_averaged(tiny_cfg, tmp_path, monkeypatch):
    from fedintel.engines.local import LocalEngine
    from fedintel.training.mods import ClientMods

    def poison(update, job):
        if update.client_id == min(j for j in range(4)):
            k = next(iter(update.delta))
            update.delta[k] = torch.full_like(update.delta[k], float("nan"))
        return update

    orig = LocalEngine.__init__
    monkeypatch.setattr(LocalEngine, "__init__", lambda self, world, mods=None: orig(self, world, ClientMods(update=(poison,))))
    res = run_experiment(tiny_cfg(federation={"clients_per_round": 4}), tmp_path / "poisoned")
    assert all(r["clients_rejected"] == 1 and r["clients_accepted"] == 3 for r in res.rounds[1:])
    assert all(math.isfinite(r["eval_loss"]) for r in res.rounds)
    con = sqlite3.connect(tmp_path / "poisoned" / "metrics.db")
    events = con.execute("SELECT client_id, kind, message FROM events").fetchall()
    assert events and all(e[0] == 0 and e[1] == "rejected" and "NaN" in e[2] for e in events)
    assert ClientFailure  # the engine's failure type is part of the public API


def test_nan_loss_with_on_client_diverged_stop_stops_the_run_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    from fedintel import experiment
    from fedintel import world as world_mod

    def build_world_with_fault(cfg):
        w = world_mod.build_world(cfg)
        calls = {"n": 0}

        def nan_after_round_one(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 12:  # round 1 = 3 clients x 2 steps x 2 micro-batches
                    return output * float("nan")
            return output

        w.base.model.get_output_embeddings().register_forward_hook(nan_after_round_one)
        return w

    monkeypatch.setattr(experiment, "build_world", build_world_with_fault)
    with pytest.raises(RunFailed, match="training loss is nan"):
        run_experiment(tiny_cfg(federation={"rounds": 3, "on_client_diverged": "stop"}), tmp_path / "nan")
    ckpts = list_checkpoints(tmp_path / "nan")
    assert [r for r, _ in ckpts] == [0, 1]
    assert all(torch.isfinite(t).all() for t in torch.load(ckpts[-1][1])["state"]["global"].values())
    con = sqlite3.connect(tmp_path / "nan" / "metrics.db")
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "diverged"


def test_nan_loss_in_one_client_drops_its_update_and_the_run_goes_on(tiny_cfg, tmp_path, monkeypatch):
    from fedintel.engines import local
    from fedintel.training.client import TrainingDiverged

    real = local.run_train_job

    def diverge_client_1(cfg, slot, data, job, **kw):
        if job.client_id == 1:
            raise TrainingDiverged("client 1: training loss is nan")
        return real(cfg, slot, data, job, **kw)

    fed = {"clients_per_round": 4}
    without = run_experiment(tiny_cfg(federation={**fed, "exclude_clients": [1]}), tmp_path / "without")
    monkeypatch.setattr(local, "run_train_job", diverge_client_1)
    res = run_experiment(tiny_cfg(federation=fed), tmp_path / "dropped")  # on_client_diverged: drop (default)
    assert res.status == "finished" and [r["clients_accepted"] for r in res.rounds[1:]] == [3.0, 3.0]
    con = sqlite3.connect(tmp_path / "dropped" / "metrics.db")
    events = con.execute("SELECT round, client_id, kind, message FROM events").fetchall()
    assert events == [(1, 1, "diverged", "client 1: training loss is nan"), (2, 1, "diverged", "client 1: training loss is nan")]
    a = latest_checkpoint(res.run_dir)["state"]["global"]
    b = latest_checkpoint(without.run_dir)["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # as if the diverged client had not taken part
