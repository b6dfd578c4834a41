"""The batched engine (runtime.client_batching) returns the sequential engine's updates on every scheme (#15)."""

import logging

import pytest
import torch

from fedintel.config import ConfigError, parse_config
from fedintel.data.tokenize import TokenizedSet
from fedintel.engines.batched import BatchedEngine
from fedintel.engines.local import LocalEngine
from fedintel.experiment import build_scheme, run_experiment
from fedintel.optimizers import build_optimizer
from fedintel.optimizers.scaffold import DC_KEY
from fedintel.trust import build_client_mods
from fedintel.types import TrainJob, Update
from fedintel.world import build_world

# max_length 8: every chatterbot example fills it, so a combined micro-batch adds no padding to any client's rows
# and float32 results agree to rounding (tests/training/test_batched.py shows why padding alone moves them more).
FIXED = {"max_length": 8}
DOMAINS = {**FIXED, "domains": ["tech_support", "trivia"], "partition": {"method": "by_domain"}}
NO_DROPOUT = {"dropout": 0.0}


@pytest.fixture
def batched_for_real(caplog):
    """Fails the test if the batched engine fell back to training one by one."""
    with caplog.at_level(logging.WARNING, logger="fedintel.engines.batched"):
        yield
    assert not [r for r in caplog.records if r.name == "fedintel.engines.batched"]


def rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in b)


def assert_same_updates(batched: list, sequential: list) -> None:
    assert [type(r) for r in batched] == [type(r) for r in sequential]
    for b, s in zip(batched, sequential, strict=True):
        assert b.client_id == s.client_id
        if not isinstance(s, Update):
            continue
        assert rel_err(b.delta, s.delta) <= 1e-5
        assert (b.steps, b.tokens, b.flops, b.num_samples, b.wire_bytes, b.nbytes, b.base_version) == (
            s.steps, s.tokens, s.flops, s.num_samples, s.wire_bytes, s.nbytes, s.base_version)
        assert b.train_loss == pytest.approx(s.train_loss, rel=1e-5)
        assert b.extras.keys() == s.extras.keys()
        for key in s.extras:
            assert rel_err(b.extras[key], s.extras[key]) <= 1e-5


def unequal_shards(world, sizes=(16, 5, 11, 3)) -> None:
    for client, n in zip(world.data.clients, sizes, strict=True):
        client.train = TokenizedSet(client.train.input_ids[:n])


def test_mixed_ranks_fedprox_local_dp_and_unequal_steps_match_the_sequential_engine(tiny_cfg, batched_for_real):
    cfg = tiny_cfg(data=FIXED, peft={**NO_DROPOUT, "client_ranks": [2, 4, 8]}, federation={"local_epochs": 1.0},
                   optimizer={"name": "fedprox", "mu": 0.1}, privacy={"dp": "local", "noise_multiplier": 0.01},
                   runtime={"client_batching": 3})
    world = build_world(cfg)
    unequal_shards(world)  # 4, 2, 3 and 1 steps; batches of 4, 4, 4 and 3 rows
    jobs = [TrainJob(c, world.initial_state, 0, 1) for c in (3, 0, 2, 1)]
    seq = LocalEngine(world, build_client_mods(cfg)).train(jobs)
    seen: list[int] = []
    bat = BatchedEngine(world, build_client_mods(cfg)).train(jobs, on_done=lambda r: seen.append(r.client_id))
    assert seen == [3, 0, 2, 1] and [u.steps for u in seq] == [1, 4, 3, 2]
    assert_same_updates(bat, seq)
    assert {u.wire_bytes for u in bat} != {None}  # rank-sized uploads


def test_scaffold_control_variates_match_the_sequential_engine(tiny_cfg, batched_for_real):
    cfg = tiny_cfg(data=FIXED, peft=NO_DROPOUT, optimizer={"name": "scaffold"}, runtime={"client_batching": 4})
    world = build_world(cfg)
    opt = build_optimizer(cfg.optimizer)
    state = opt.init_state(world.initial_state)
    gen = torch.Generator().manual_seed(0)
    state["c"] = {k: 1e-3 * torch.randn(t.shape, generator=gen) for k, t in state["c"].items()}
    jobs = [TrainJob(c, world.initial_state, 0, 1, extras=opt.downlink(state, c)) for c in range(4)]
    bat = BatchedEngine(world).train(jobs)
    assert_same_updates(bat, LocalEngine(world).train(jobs))
    assert all(DC_KEY in u.extras for u in bat)


SCHEMES = {
    "fedavg": {"federation": {"clients_per_round": 4}},
    "clustered": {"data": DOMAINS, "federation": {"scheme": "clustered", "clients_per_round": 4},
                  "clustering": {"method": "given", "num_clusters": 2}},
    "hierarchical": {"federation": {"scheme": "hierarchical", "clients_per_round": 4},
                     "network": {"edge_servers": 2}, "hierarchy": {"tiers": [{"nodes": 2, "period": 1}],
                                                                   "cloud_period": 2}},
    "async": {"federation": {"scheme": "async", "clients_per_round": 4}, "network": {"enabled": True},
              "async": {"mode": "fedbuff", "buffer_size": 2, "concurrency": 4}},
}


class Recording:
    """Keeps every result an engine returns, keyed by (round, client, salt)."""

    def __init__(self, engine) -> None:
        self.engine, self.results = engine, {}
        self.calls: list[int] = []

    def train(self, jobs, on_done=None):
        out = self.engine.train(jobs, on_done)
        self.calls.append(len(jobs))
        self.results.update({(j.round_idx, j.client_id, j.salt): r for j, r in zip(jobs, out, strict=True)})
        return out

    def evaluate(self, jobs):
        return self.engine.evaluate(jobs)

    def close(self) -> None:
        self.engine.close()


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_gives_the_sequential_run(tiny_cfg, tmp_path, scheme, batched_for_real):
    sections = {"data": FIXED, **SCHEMES[scheme], "peft": NO_DROPOUT}
    runs = {}
    for name, engine_cls, batching in (("seq", LocalEngine, "off"), ("bat", BatchedEngine, 4)):
        cfg = tiny_cfg(**sections, runtime={"client_batching": batching})
        rec: dict[str, Recording] = {}

        def factory(world, cfg=cfg, engine_cls=engine_cls, rec=rec):
            rec["engine"] = Recording(engine_cls(world, build_client_mods(cfg)))
            return rec["engine"]

        result = run_experiment(cfg, tmp_path / name, engine_factory=factory)
        runs[name] = (result, rec["engine"])
    (seq, seq_eng), (bat, bat_eng) = runs["seq"], runs["bat"]
    assert seq_eng.results.keys() == bat_eng.results.keys()
    keys = sorted(seq_eng.results)
    assert_same_updates([bat_eng.results[k] for k in keys], [seq_eng.results[k] for k in keys])
    assert len(seq.rounds) == len(bat.rounds)
    for s, b in zip(seq.rounds, bat.rounds, strict=True):
        assert set(s) == set(b)
        for key in s:
            if key != "wall_s":
                assert b[key] == pytest.approx(s[key], rel=1e-5, abs=1e-9), key
    if scheme != "async":  # async dispatches one client at a time
        assert max(bat_eng.calls) >= 2


def test_build_scheme_picks_the_batched_engine(tiny_cfg):
    cfg = tiny_cfg(runtime={"client_batching": "auto"})
    scheme = build_scheme(cfg, build_world(cfg), reporter=None)
    assert isinstance(scheme.engine, BatchedEngine) and scheme.engine.group == 1  # auto on the CPU: one by one
    cfg = tiny_cfg(runtime={"client_batching": 3})
    assert build_scheme(cfg, build_world(cfg), reporter=None).engine.group == 3


def test_prefix_tuning_falls_back_to_one_by_one_with_one_logged_reason(tiny_cfg, caplog):
    cfg = tiny_cfg(peft={"method": "prefix"}, runtime={"client_batching": 4})
    world = build_world(cfg)
    jobs = [TrainJob(c, world.initial_state, 0, 1) for c in range(3)]
    seq = LocalEngine(world).train(jobs)
    with caplog.at_level(logging.INFO, logger="fedintel.engines.batched"):
        engine = BatchedEngine(world)
        bat = engine.train(jobs) + engine.train(jobs)
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 1 and "one by one" in reasons[0] and "peft.method prefix" in reasons[0]
    for b, s in zip(bat, seq + seq, strict=True):
        assert all(torch.equal(b.delta[k], s.delta[k]) for k in s.delta)


@pytest.mark.parametrize("value", [0, -2, "x", 1.5])
def test_a_bad_client_batching_is_a_config_error_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"^runtime\.client_batching: "):
        parse_config({"runtime": {"client_batching": value}})


def test_client_batching_settings():
    assert parse_config({"runtime": {"client_batching": False}}).runtime.client_batching == "off"  # YAML's `off`
    assert parse_config({"runtime": {"client_batching": "8"}}).runtime.client_batching == 8
    with pytest.raises(ConfigError, match="runtime.client_batching.*runtime.workers"):
        parse_config({"runtime": {"client_batching": 4, "workers": 2}})
    with pytest.raises(ConfigError, match="runtime.client_batching.*engine: flower"):
        parse_config({"engine": "flower", "runtime": {"client_batching": 4}})


def test_bfloat16_autocast_keeps_float32_masters_and_matches(tiny_cfg, batched_for_real):
    cfg = tiny_cfg(data=FIXED, peft=NO_DROPOUT, runtime={"dtype": "bfloat16", "client_batching": 3})
    world = build_world(cfg)
    jobs = [TrainJob(c, world.initial_state, 0, 1) for c in range(3)]
    bat = BatchedEngine(world).train(jobs)
    assert_same_updates(bat, LocalEngine(world).train(jobs))
    assert all(t.dtype == torch.float32 for u in bat for t in u.delta.values())
