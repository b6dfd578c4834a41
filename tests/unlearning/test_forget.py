"""Unlearning on opt-out: exact retraining equals a run that never had the client; the approximate method
subtracts stored contributions; membership inference on the forgotten data drops to the unseen level."""

import sqlite3

import pytest
import torch

from fedintel.audit.membership import run_membership
from fedintel.cli import main
from fedintel.config import ConfigError
from fedintel.experiment import run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from fedintel.tracking.contributions import load_contributions
from fedintel.unlearning.forget import (
    forget_approximate,
    forget_exact,
    participation,
    subtract_contributions,
)
from fedintel.world import build_world
from tests.conftest import tiny_config

FORGET = 0  # with seed 0 the sampler picks {1,3}, {0,2}, {0,1}: client 0 first trains in round 2, and in the last
# A run that memorises a little: small shards, many local steps, two clients per round, LoRA on the MLP too.
SECTIONS = {
    "federation": {"rounds": 3, "clients_per_round": 2, "local_steps": 24, "batch_size": 6, "micro_batch_size": 6},
    "data": {"samples_per_client": 24, "eval_fraction": 0.25, "max_length": 64},
    "peft": {"r": 32, "alpha": 64, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]},
    "eval": {"per_client": False},
    "output": {"save_client_updates": True},
    "threads": 1,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unlearn")
    cfg = tiny_config(tmp, **SECTIONS)
    run_experiment(cfg, tmp / "orig")
    forgotten = forget_exact(tmp / "orig", FORGET)
    never_cfg = tiny_config(tmp, **{**SECTIONS, "federation": {**SECTIONS["federation"], "exclude_clients": [FORGET]},
                                    "output": {"save_client_updates": False}})
    run_experiment(never_cfg, tmp / "never")
    return {"tmp": tmp, "cfg": cfg, "orig": tmp / "orig", "never": tmp / "never", "exact": forgotten,
            "world": build_world(cfg)}


def _rows(run_dir, table, cols):
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3").fetchall()
    finally:
        con.close()


def test_exact_unlearning_equals_a_run_that_never_had_the_client(runs):
    res = runs["exact"]
    assert participation(runs["orig"], FORGET) == ([2, 3], [2, 3])
    assert res.method == "exact" and res.first_round == 2 and res.restart_round == 1
    assert res.rounds_recomputed == 2 and res.rounds_total == 3
    # the same adapter, bit for bit, at every checkpoint
    mine, theirs = list_checkpoints(res.run_dir), list_checkpoints(runs["never"])
    assert [r for r, _ in mine] == [r for r, _ in theirs] == [0, 1, 2, 3]
    for (_, a), (_, b) in zip(mine, theirs, strict=True):
        ga, gb = load_checkpoint(a)["state"]["global"], load_checkpoint(b)["state"]["global"]
        assert all(torch.equal(ga[k], gb[k]) for k in gb)
    final = latest_checkpoint(runs["orig"])["state"]["global"]
    assert not all(torch.equal(final[k], gb[k]) for k in gb), "the client did change the original adapter"
    # the same metrics (wall time aside), no row of the client's training left
    def clean(rows):
        return [r for r in rows if r[1] != "wall_s"]
    assert clean(_rows(res.run_dir, "round_metrics", "round, name, value")) == clean(
        _rows(runs["never"], "round_metrics", "round, name, value"))
    assert _rows(res.run_dir, "client_metrics", "round, client_id, name, value") == _rows(
        runs["never"], "client_metrics", "round, client_id, name, value")
    assert not [r for r in _rows(res.run_dir, "client_metrics", "round, client_id, name") if r[1] == FORGET]
    # cost: only rounds 2..3 retrained = the never-had run's steps in those rounds
    con = sqlite3.connect(runs["never"] / "metrics.db")
    steps = dict(con.execute("SELECT round, SUM(value) FROM client_metrics WHERE name='steps' GROUP BY round"))
    con.close()
    assert res.client_steps == steps[2] + steps[3] == 2 * 24  # rounds 2 and 3: one other client each
    assert res.full_retrain_steps == sum(steps.values()) == 4 * 24
    assert res.cost_ratio == pytest.approx(1 / 2)


def test_membership_score_of_forgotten_data_drops_to_the_unseen_level(runs):
    world = runs["world"]
    before = run_membership(runs["orig"], FORGET, world)
    after = run_membership(runs["exact"].run_dir, FORGET, world)
    # the original adapter remembers the client's examples: lower loss than unseen ones, 3+ standard errors
    assert before.auc > 0.7 and before.gap_z > 3
    # after exact unlearning they look like unseen examples: within two standard errors of "no signal"
    assert abs(after.auc - 0.5) < 2 * after.auc_std and abs(after.gap_z) < 2
    assert after.gap < before.gap / 4
    # the same attack on a client the final adapter still holds (client 1, alone in round 3) keeps its signal
    assert run_membership(runs["exact"].run_dir, 1, world).gap_z > 3


def test_subtracting_the_last_round_contribution_gives_the_others_aggregate(runs):
    """Round 3 aggregated clients 0 and 1 onto checkpoint 2; without client 0 it is client 1's delta alone."""
    orig = runs["orig"]
    [agg] = load_contributions(orig, 3)
    assert sorted(u.client_id for u in agg["updates"]) == [0, 1]
    ckpt2 = load_checkpoint(list_checkpoints(orig)[2][1])["state"]["global"]
    assert all(torch.equal(agg["reference"][k], ckpt2[k]) for k in ckpt2)
    final = latest_checkpoint(orig)["state"]["global"]
    corrected, rewritten = subtract_contributions(orig, FORGET, final, [3], runs["cfg"])
    other = next(u for u in agg["updates"] if u.client_id == 1)
    for k in final:
        torch.testing.assert_close(corrected[k], ckpt2[k] + other.delta[k], rtol=0, atol=1e-7)
    assert [u.client_id for u in rewritten[3][0]["updates"]] == [1]


def test_approximate_forget_from_the_cli(runs, capsys):
    out = runs["tmp"] / "approx"
    code = main(["forget", str(runs["orig"]), "--client", str(FORGET), "--method", "approximate",
                 "--recovery-rounds", "1", "--out", str(out), "--check-membership", "-q"])
    assert code == 0
    text = capsys.readouterr().out
    assert "approximate" in text and "membership AUC" in text and "cost vs full retraining" in text
    assert [r for r, _ in list_checkpoints(out)] == [3, 4]
    rows = _rows(out, "client_metrics", "round, client_id, name")
    assert not [r for r in rows if r[1] == FORGET]  # the client's training record is gone too
    assert {c for r, c, n in rows if r == 4 and n == "accepted"} == {1}  # round 4 drew {0, 1}: 0 opted out
    assert [u.client_id for u in load_contributions(out, 3)[0]["updates"]] == [1]
    world = runs["world"]
    assert run_membership(out, FORGET, world).gap < run_membership(runs["orig"], FORGET, world).gap / 2
    res = forget_approximate(runs["orig"], FORGET, recovery_rounds=0, out_dir=runs["tmp"] / "approx0")
    assert res.client_steps == 0 and res.cost_ratio == 0.0


def test_nothing_to_forget_and_user_errors(runs, capsys):
    forgotten = runs["exact"].run_dir  # client 0 is opted out there: it never took part
    res = forget_exact(forgotten, FORGET)
    assert res.method == "none" and res.run_dir is None
    assert not forgotten.with_name(f"{forgotten.name}-forget-{FORGET}").exists()
    assert main(["forget", str(forgotten), "--client", str(FORGET), "-q"]) == 0
    assert "nothing to forget" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="save_client_updates"):
        forget_approximate(runs["never"], 1)
    with pytest.raises(ConfigError, match="not a client"):
        forget_exact(runs["orig"], 9)
    with pytest.raises(ConfigError, match="already exists"):
        forget_exact(runs["orig"], FORGET, out_dir=forgotten)
    assert main(["forget", str(runs["tmp"] / "nope"), "--client", "0"]) == 2


CLUSTERED = {
    "data": {"domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"}},
    "federation": {"scheme": "clustered", "rounds": 3, "num_clients": 4, "clients_per_round": 3},
    "clustering": {"method": "given", "num_clusters": 2},
    "eval": {"per_client": True},
    "threads": 1,
}


def test_per_cluster_exact_unlearning_retrains_one_cluster_and_equals_full_retraining(tmp_path, capsys):
    cfg = tiny_config(tmp_path, **CLUSTERED)
    run_experiment(cfg, tmp_path / "orig")
    forget_id = 2
    took_part, _ = participation(tmp_path / "orig", forget_id)
    assert took_part, "the planted client must have trained"
    per_cluster = forget_exact(tmp_path / "orig", forget_id, out_dir=tmp_path / "cluster")
    everyone = forget_exact(tmp_path / "orig", forget_id, out_dir=tmp_path / "run", scope="run")
    assert per_cluster.scope == "cluster" and everyone.scope == "run"
    assert per_cluster.retrained_cluster == 0  # clients 0 and 2 hold the first domain
    # every cluster adapter, at every checkpoint, bit for bit the same as retraining every client
    mine, theirs = list_checkpoints(per_cluster.run_dir), list_checkpoints(everyone.run_dir)
    assert [r for r, _ in mine] == [r for r, _ in theirs]
    for (_, a), (_, b) in zip(mine, theirs, strict=True):
        ca, cb = load_checkpoint(a)["state"]["clusters"], load_checkpoint(b)["state"]["clusters"]
        for x, y in zip(ca, cb, strict=True):
            assert all(torch.equal(x[k], y[k]) for k in y)
    # the same evaluations (the other cluster's adapter was replayed, not retrained)
    evals = "round, name, value"
    def ev(run):
        return [r for r in _rows(run, "round_metrics", evals) if r[1].startswith("eval_")]
    assert ev(per_cluster.run_dir) == ev(everyone.run_dir)
    # for less work: only cluster 0's members (client 0, once 2 is gone) trained
    assert 0 < per_cluster.client_steps < everyone.client_steps
    trained = {c for _, c, n in _rows(per_cluster.run_dir, "client_metrics", "round, client_id, name")
               if n == "steps" and _ > per_cluster.restart_round}
    assert trained == {0}
    # forcing the scope where it would not be exact is refused with the reason
    sim = tiny_config(tmp_path, **{**CLUSTERED, "clustering": {"method": "similarity", "num_clusters": 2}})
    run_experiment(sim, tmp_path / "sim")
    with pytest.raises(ConfigError, match="--scope cluster: .*similarity"):
        forget_exact(tmp_path / "sim", forget_id, out_dir=tmp_path / "sim-cluster", scope="cluster")
    assert main(["forget", str(tmp_path / "orig"), "--client", str(forget_id), "--out", str(tmp_path / "cli"), "-q"]) == 0
    assert "cluster 0 only" in capsys.readouterr().out
