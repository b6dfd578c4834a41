"""The local engine on worker processes: the same run as the sequential engine, clients in parallel."""

import pytest
import torch

from fedintel.config import ConfigError, parse_config
from fedintel.engines.parallel import ParallelEngine
from fedintel.experiment import run_experiment
from fedintel.trust import build_client_mods
from fedintel.types import TrainJob, Update
from fedintel.world import build_world


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_parallel_workers_give_the_sequential_run_bit_for_bit(tiny_cfg, tmp_path, one_thread):
    seq = run_experiment(tiny_cfg(runtime={"device": "cpu", "threads": 1}), tmp_path / "seq")
    par = run_experiment(tiny_cfg(runtime={"device": "cpu", "threads": 1, "workers": 2}), tmp_path / "par")
    keys = ("eval_loss", "train_loss", "cum_bytes_up", "sim_time_s", "client_eval_loss")  # per-client eval: on workers
    assert [[r.get(k) for k in keys] for r in par.rounds] == [[r.get(k) for k in keys] for r in seq.rounds]
    assert par.rounds[-1]["eval_loss"] < par.rounds[0]["eval_loss"]


def test_every_clients_delta_matches_and_results_keep_job_order(tiny_cfg, one_thread):
    # with client mods (a sign-flipping attacker, local DP): the workers apply the mods they were sent
    cfg = tiny_cfg(runtime={"device": "cpu", "threads": 1, "workers": 2}, federation={"num_clients": 4},
                   privacy={"dp": "local", "noise_multiplier": 0.5}, attack={"kind": "sign_flip", "fraction": 0.25})
    world = build_world(cfg)
    from fedintel.engines.local import LocalEngine

    mods = build_client_mods(cfg)
    jobs = [TrainJob(c, world.initial_state, 0, 1) for c in (3, 0, 2, 1)]
    seq = LocalEngine(world, mods).train(jobs)
    engine = ParallelEngine(cfg, mods)
    try:
        seen = []
        par = engine.train(jobs, on_done=lambda r: seen.append(r.client_id))
    finally:
        engine.close()
    assert [r.client_id for r in par] == [3, 0, 2, 1] and sorted(seen) == [0, 1, 2, 3]
    for a, b in zip(seq, par, strict=True):
        assert isinstance(b, Update)
        assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
        assert a.metrics == b.metrics
    assert sum(u.metrics.get("malicious", 0.0) for u in par) == 1.0
    assert not any(p.is_alive() for p in engine.procs)


def test_worker_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(ConfigError, match="runtime.workers"):
        parse_config({"engine": "flower", "runtime": {"workers": 2}})
    with pytest.raises(ConfigError, match="runtime.devices"):
        parse_config({"runtime": {"devices": ["gpu0"]}})
    assert parse_config({"runtime": {"devices": ["cuda:0", "cuda:1"]}}).runtime.num_workers == 2
