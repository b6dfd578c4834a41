"""FlowerEngine and the ClientApp in one process, over a fake Grid (no sockets): fast checks of the logic.

The fake Grid hands each message to fedintel's real ClientApp (``client_app.app``) with the node config of
its destination node, as a SuperNode would; dead nodes never answer. The real-process tests are in
``test_flower_deploy.py`` and ``test_flower_node_failure.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedintel.engines.flower import messages as m
from fedintel.engines.flower.client_app import NodeConfigError, NodeSettings
from fedintel.engines.flower.client_app import app as client_app
from fedintel.engines.flower.engine import FlowerEngine
from fedintel.engines.flower.shards import load_shard, partition_key, write_shards
from fedintel.experiment import RunFailed, run_experiment
from fedintel.tracking.store import MetricsStore
from fedintel.types import ClientFailure, EvalJob, EvalResult, TrainJob, Update
from fedintel.world import build_world


class FakeGrid(Grid):
    """Delivers each message to the ClientApp of its node, in this process; ``dead`` nodes never reply."""

    def __init__(self, node_configs: dict[int, dict], dead: Iterable[int] = (), diverge: Iterable[int] = ()):
        self.node_configs = node_configs
        self.dead = set(dead)
        self.diverge = set(diverge)
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def set_run(self, run):  # pragma: no cover - not used
        self._run = run

    @property
    def run(self):  # pragma: no cover - not used
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.dead:
                continue
            if node in self.diverge and msg.metadata.message_type == m.TRAIN:
                cid = int(msg.content[m.JOB_KEY]["client-id"])
                self.replies[msg.metadata.message_id] = Message(m.diverged_content(cid, "loss is nan"), reply_to=msg)
                continue
            ctx = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(), run_config={})
            try:
                reply = client_app(msg, ctx)
            except Exception as err:  # what Flower's ClientApp runtime turns an exception into
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(err)}:<'{err}'>"), reply_to=msg)
            self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - not used
        return self.pull_messages(self.push_messages(messages))


def _cfg(tiny_cfg, **fed):
    return tiny_cfg(federation={"num_clients": 3, "clients_per_round": 3, **fed})


def _nodes(shards: Path, n: int = 3) -> dict[int, dict]:
    return {100 + i: {"data-dir": str(shards), "client-ids": str(i)} for i in range(n)}


def _metrics(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rounds]


def test_adapter_travels_bit_exact():
    state = {"a.lora_A.weight": torch.randn(8, 64), "b.lora_B.weight": torch.randn(64, 8).double(), "c": torch.zeros(3)}
    back = m.record_to_state(m.state_to_record(state))
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])
    back["c"] += 1  # writable, and not aliasing the sender's tensor
    assert state["c"].sum() == 0


def test_node_shard_tokenises_exactly_like_the_local_world(tiny_cfg, tmp_path):
    for cfg in (_cfg(tiny_cfg), tiny_cfg(model={"name": "tiny-bert", "task": "classification"},
                                         data={"dataset": "vader"}, federation={"num_clients": 3, "clients_per_round": 3})):
        world = build_world(cfg)
        shards = write_shards(cfg, tmp_path / cfg.model.name, tokenizer=world.base.tokenizer)
        for c in world.data.clients:
            node = load_shard(shards, c.client_id, world.base.tokenizer, cfg.data.max_length, cfg.model.task)
            assert node.input_ids == c.train.input_ids and node.labels == c.train.labels
            assert m.shard_fingerprint(node.input_ids, node.labels) == m.shard_fingerprint(c.train.input_ids, c.train.labels)
        manifest = json.loads((shards / "manifest.json").read_text())
        assert manifest["partition_key"] == partition_key(cfg)


def test_node_settings_parse_and_explain(tmp_path):
    s = NodeSettings.from_node_config({"data-dir": str(tmp_path), "client-ids": "0, 3", "threads": 2})
    assert s.client_ids == (0, 3) and s.threads == 2
    assert NodeSettings.from_node_config({"data-dir": str(tmp_path), "client-ids": 4}).client_ids == (4,)
    (tmp_path / "client_5.jsonl").write_text("{}\n")
    assert NodeSettings.from_node_config({"data-dir": str(tmp_path)}).client_ids == (5,)
    with pytest.raises(NodeConfigError, match="data-dir"):
        NodeSettings.from_node_config({})
    with pytest.raises(NodeConfigError, match="client-ids"):
        NodeSettings.from_node_config({"data-dir": str(tmp_path), "client-ids": "a,b"})


def test_flower_engine_reproduces_the_local_engine(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    local = run_experiment(cfg, tmp_path / "local")
    shards = write_shards(cfg, tmp_path / "shards")
    grid = FakeGrid(_nodes(shards))
    flower = run_experiment(cfg, tmp_path / "flower", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    assert _metrics(flower.rounds) == _metrics(local.rounds)  # same process, same threads: bit-identical
    jobs = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN]
    assert len(jobs) == 6 and {j.metadata.dst_node_id for j in jobs} == {100, 101, 102}
    # eval.per_client: each client's eval split is scored on its own node (rounds 0, 1, 2), never on the server
    evals = [msg for msg in grid.sent if msg.metadata.message_type == m.EVALUATE]
    assert sorted((int(e.content[m.JOB_KEY]["round"]), e.metadata.dst_node_id) for e in evals) == [
        (r, n) for r in (0, 1, 2) for n in (100, 101, 102)]
    with MetricsStore(tmp_path / "flower" / "metrics.db") as fs, MetricsStore(tmp_path / "local" / "metrics.db") as ls:
        for r in (1, 2):
            assert fs.client_rows(flower.run_id, r) == ls.client_rows(local.run_id, r)
            assert all("eval_loss" in row for row in fs.client_rows(flower.run_id, r))


def test_client_side_transformations_happen_on_the_node_as_locally(tiny_cfg, tmp_path):
    """Heterogeneous LoRA ranks, local DP noise and a label-flipping client: the node does what LocalEngine does."""
    cfg = tiny_cfg(model={"name": "tiny-bert", "task": "classification"}, data={"dataset": "vader"},
                   federation={"num_clients": 3, "clients_per_round": 3, "rounds": 1},
                   eval={"max_samples": 8, "per_client": False}, peft={"r": 8, "client_ranks": [2, 8]},
                   aggregation={"lora": "exact"}, privacy={"dp": "local", "noise_multiplier": 0.5, "clip_norm": 1.0},
                   attack={"kind": "label_flip", "fraction": 0.34})
    local = run_experiment(cfg, tmp_path / "local")
    shards = write_shards(cfg, tmp_path / "shards")
    flower = run_experiment(cfg, tmp_path / "flower",
                            engine_factory=lambda w: FlowerEngine(FakeGrid(_nodes(shards)), w, poll_interval=0.0))
    assert _metrics(flower.rounds) == _metrics(local.rounds)
    with MetricsStore(tmp_path / "flower" / "metrics.db") as fs, MetricsStore(tmp_path / "local" / "metrics.db") as ls:
        assert fs.client_rows(flower.run_id, 1) == ls.client_rows(local.run_id, 1)  # rank-sized bytes_up per client


def test_dead_node_times_out_once_then_fails_fast(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    shards = write_shards(cfg, tmp_path / "shards")
    grid = FakeGrid(_nodes(shards), dead=[102])
    engines = []

    def factory(w):
        engines.append(FlowerEngine(grid, w, job_timeout=0.5, discovery_timeout=1.0, poll_interval=0.01))
        return engines[0]

    res = run_experiment(cfg, tmp_path / "run", engine_factory=factory)
    assert res.status == "finished" and len(res.rounds) == 3
    assert [r["clients_accepted"] for r in res.rounds[1:]] == [2.0, 2.0]
    # node 102 never answered discovery: client 2 has no host, which every round reports
    with MetricsStore(tmp_path / "run" / "metrics.db") as store:
        events = store.events(res.run_id)
    assert [e[1:3] for e in events if e[2] == "failed"] == [(2, "failed"), (2, "failed")]
    # nor can it evaluate client 2's own eval split (eval.per_client): recorded, the others evaluated
    assert [e[:3] for e in events if e[2] == "eval_failed"] == [(1, 2, "eval_failed"), (2, 2, "eval_failed")]
    assert all("no SuperNode hosts client 2" in e[3] for e in events)

    # A node that answered discovery and then died: one timeout, then immediate failures.
    grid2 = FakeGrid(_nodes(shards))
    eng = FlowerEngine(grid2, engines[0].world, job_timeout=0.5, poll_interval=0.01)
    eng.discover(wait=True)
    grid2.dead.add(102)
    state = engines[0].world.initial_state
    first = eng.train([TrainJob(c, state, 0, 1) for c in range(3)])
    assert [type(r) for r in first] == [Update, Update, ClientFailure]
    assert "no reply within 0.5 s (round 1)" in first[2].reason
    second = eng.train([TrainJob(2, state, 0, 2)])
    assert isinstance(second[0], ClientFailure) and "is lost" in second[0].reason


def test_submit_and_poll_return_each_result_as_it_arrives(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    shards = write_shards(cfg, tmp_path / "shards")
    world = build_world(cfg)
    eng = FlowerEngine(FakeGrid(_nodes(shards)), world, poll_interval=0.01)
    handles = [eng.submit(TrainJob(c, world.initial_state, 0, 1)) for c in (2, 0, 1)]
    assert eng.outstanding == 3
    got = {}
    while eng.outstanding:
        for h, r in eng.poll(timeout=1.0):
            got[h.job.client_id] = r
    assert sorted(got) == [0, 1, 2] and all(isinstance(r, Update) for r in got.values())
    assert {h.job.client_id for h in handles} == set(got)
    assert all(math.isfinite(r.train_loss) and r.num_samples > 0 for r in got.values())


def test_foreign_or_stale_shards_are_refused(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    shards = write_shards(cfg, tmp_path / "shards")
    other = write_shards(_cfg(tiny_cfg, seed=5), tmp_path / "other")  # another partition
    nodes = _nodes(shards)
    nodes[102] = {"data-dir": str(other), "client-ids": "2"}
    world = build_world(cfg)
    eng = FlowerEngine(FakeGrid(nodes), world, discovery_timeout=0.5, poll_interval=0.01)
    res = eng.train([TrainJob(2, world.initial_state, 0, 1)])[0]
    assert isinstance(res, ClientFailure) and "fedintel deploy partition" in res.reason

    # same partition key, but the node's rows were edited: the shard fingerprint catches it
    lines = (shards / "client_1.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["text"] = "tampered " + row["text"]
    (shards / "client_1.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    eng = FlowerEngine(FakeGrid(_nodes(shards)), world, poll_interval=0.01)
    res = eng.train([TrainJob(1, world.initial_state, 0, 1)])[0]
    assert isinstance(res, ClientFailure) and "differs from the experiment" in res.reason


def test_divergence_on_a_node_stops_the_run_like_locally(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, on_client_diverged="stop")
    shards = write_shards(cfg, tmp_path / "shards")
    grid = FakeGrid(_nodes(shards), diverge=[101])
    with pytest.raises(RunFailed, match="loss is nan"):
        run_experiment(cfg, tmp_path / "run", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))


def test_divergence_on_a_node_drops_that_client_by_default(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    shards = write_shards(cfg, tmp_path / "shards")
    grid = FakeGrid(_nodes(shards), diverge=[101])
    res = run_experiment(cfg, tmp_path / "run", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    assert res.status == "finished" and [r["clients_accepted"] for r in res.rounds[1:]] == [2.0, 2.0]
    with MetricsStore(tmp_path / "run" / "metrics.db") as store:
        assert [e[1:] for e in store.events(res.run_id)] == [(1, "diverged", "loss is nan")] * 2


class CorruptingGrid(FakeGrid):
    """Like FakeGrid, but ``corrupt(content)`` rewrites every training reply of node 101."""

    def __init__(self, node_configs, corrupt):
        super().__init__(node_configs)
        self.corrupt = corrupt

    def pull_messages(self, message_ids):
        out = super().pull_messages(message_ids)
        for reply in out:
            if reply.metadata.src_node_id == 101 and m.DELTA_KEY in reply.content:
                self.corrupt(reply.content)
        return out


def _set_result(key, value):
    def corrupt(content):
        content[m.RESULT_KEY][key] = value
    return corrupt


def _drop_result(key):
    def corrupt(content):
        del content[m.RESULT_KEY][key]
    return corrupt


def _bad_layout(content):
    import numpy as np
    from flwr.app import Array

    content[m.DELTA_KEY][m.LAYOUT_KEY] = Array(np.frombuffer(b"{not json", dtype=np.uint8).copy())


@pytest.mark.parametrize("corrupt", [_drop_result("num-samples"), _set_result("flops", [1.0, 2.0]),
                                     _set_result("train-loss", float("nan")), _bad_layout],
                         ids=["missing-field", "list-field", "nan-loss", "bad-layout-json"])
def test_a_malformed_reply_fails_that_client_only(tiny_cfg, tmp_path, corrupt):
    cfg = _cfg(tiny_cfg, rounds=1)
    shards = write_shards(cfg, tmp_path / "shards")
    grid = CorruptingGrid(_nodes(shards), corrupt)
    res = run_experiment(cfg, tmp_path / "run", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    assert res.status == "finished" and res.rounds[1]["clients_accepted"] == 2.0
    with MetricsStore(tmp_path / "run" / "metrics.db") as store:
        assert [e[1:3] for e in store.events(res.run_id)] == [(1, "failed")]


class CorruptingEvalGrid(FakeGrid):
    """Like FakeGrid, but ``corrupt(content)`` rewrites every evaluation reply of node 101."""

    def __init__(self, node_configs, corrupt):
        super().__init__(node_configs)
        self.corrupt = corrupt

    def pull_messages(self, message_ids):
        out = super().pull_messages(message_ids)
        for reply in out:
            if reply.metadata.src_node_id == 101 and "eval-0" in reply.content:
                self.corrupt(reply.content)
        return out


def _set_eval(key, value):
    def corrupt(content):
        content["eval-0"][key] = value
    return corrupt


def _drop_eval_record(content):
    del content["eval-1"]


def test_evaluation_jobs_run_on_the_clients_nodes_as_locally(tiny_cfg, tmp_path):
    """IFCA's cluster pick (train rows, several adapters) and per-client evaluation (eval rows) on the node that
    holds the data give the local engine's numbers; only adapters go down and only numbers come back."""
    from fedintel.engines.local import LocalEngine

    cfg = tiny_cfg(federation={"num_clients": 3, "clients_per_round": 3, "scheme": "clustered"},
                   clustering={"method": "ifca", "num_clusters": 2})
    world = build_world(cfg)
    shards = write_shards(cfg, tmp_path / "shards", tokenizer=world.base.tokenizer)
    other = {k: v + 0.01 for k, v in world.initial_state.items()}
    jobs = [EvalJob(2, [world.initial_state, other], 1, split="train", measure="pick_loss"),
            EvalJob(0, [other], 1), EvalJob(1, [world.initial_state], 1)]
    grid = FakeGrid(_nodes(shards))
    flower = FlowerEngine(grid, world, poll_interval=0.0).evaluate(jobs)
    local = LocalEngine(world).evaluate(jobs)
    assert [type(r) for r in flower] == [EvalResult] * 3 and [r.client_id for r in flower] == [2, 0, 1]
    assert [r.metrics for r in flower] == [r.metrics for r in local]
    assert set(flower[0].metrics[0]) == {"loss"} and set(flower[1].metrics[0]) == {"loss", "perplexity"}
    assert flower[0].metrics[0] != flower[0].metrics[1]  # each adapter scored on its own
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.EVALUATE]
    assert [msg.metadata.dst_node_id for msg in sent] == [102, 100, 101]
    assert all(set(msg.content) <= {m.JOB_KEY, "adapter-0", "adapter-1"} for msg in sent)

    # a reply that does not hold what the job asked for fails that client only, with the reason
    for corrupt, why in [(_set_eval("loss", float("nan")), "finite"), (_set_eval("loss", -1.0), "out of range"),
                         (_set_eval("accuracy", 0.5), "gives only"), (_drop_eval_record, "eval-1")]:
        res = FlowerEngine(CorruptingEvalGrid(_nodes(shards), corrupt), world, poll_interval=0.0).evaluate(
            [EvalJob(1, [world.initial_state, other], 1, split="train", measure="pick_loss"), jobs[1]])
        assert isinstance(res[0], ClientFailure) and why in res[0].reason, res[0]
        assert isinstance(res[1], EvalResult)


@pytest.mark.parametrize("scheme", [
    {"federation": {"scheme": "hierarchical"}, "hierarchy": {"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2}},
    {"federation": {"scheme": "async"}, "async": {"mode": "fedasync", "concurrency": 2, "alpha": 0.6}},
    {"federation": {"scheme": "clustered"}, "clustering": {"method": "given", "num_clusters": 2},
     "data": {"partition": {"method": "by_domain"}}},
    {"federation": {"scheme": "clustered"}, "clustering": {"method": "similarity", "num_clusters": 2}},
], ids=["hierarchical", "async", "clustered-given", "clustered-similarity"])
def test_every_scheme_gives_the_local_metrics_on_the_flower_engine(tiny_cfg, tmp_path, scheme):
    fed, data = scheme.pop("federation"), scheme.pop("data", {})
    cfg = tiny_cfg(federation={"num_clients": 3, "clients_per_round": 3, **fed}, eval={"max_samples": 8, "per_client": False},
                   data={"domains": ["tech_support", "trivia"], **data}, **scheme)
    local = run_experiment(cfg, tmp_path / "local")
    shards = write_shards(cfg, tmp_path / "shards")
    grid = FakeGrid(_nodes(shards))
    flower = run_experiment(cfg, tmp_path / "flower", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    assert _metrics(flower.rounds) == _metrics(local.rounds)
    assert sum(msg.metadata.message_type == m.TRAIN for msg in grid.sent) >= 4


def test_wall_clock_async_merges_replies_as_they_arrive(tiny_cfg, tmp_path):
    from fedintel.engines.flower.wallclock import WallClockAsyncScheme
    from fedintel.experiment import build_aggregator

    cfg = tiny_cfg(federation={"scheme": "async", "num_clients": 3, "clients_per_round": 3},
                   eval={"max_samples": 8, "per_client": False}, data={"domains": ["tech_support", "trivia"]},
                   **{"async": {"mode": "fedasync", "concurrency": 2, "alpha": 0.6}})
    shards = write_shards(cfg, tmp_path / "shards")
    world = build_world(cfg)
    grid = FakeGrid(_nodes(shards))
    scheme = WallClockAsyncScheme(world, FlowerEngine(grid, world, poll_interval=0.0), build_aggregator(cfg))
    state = scheme.initial_state()
    before = scheme.initial_record(state).metrics["eval_loss"]
    for r in (1, 2):
        state, rec = scheme.run_round(r, state)
        assert rec.metrics["clients_accepted"] == 3.0  # 3 arrivals per round, each merged on arrival
    assert state["version"] == 6 and state["arrivals"] == 6
    assert rec.metrics["eval_loss"] < before
    assert rec.metrics["max_staleness"] >= 1  # two jobs in flight: the second reply is one version stale
    with pytest.raises(TypeError, match="submit/poll"):
        from fedintel.engines.local import LocalEngine

        WallClockAsyncScheme(world, LocalEngine(world), build_aggregator(cfg))


def test_async_clock_wall_in_the_experiment_file_runs_the_wall_clock_scheme(tiny_cfg, tmp_path):
    """``engine: flower`` + ``async.clock: wall`` is reachable from a config, without a network model."""
    from fedintel.engines.flower.wallclock import WallClockAsyncScheme
    from fedintel.experiment import scheme_class

    cfg = tiny_cfg(engine="flower", federation={"scheme": "async", "num_clients": 3, "clients_per_round": 3,
                                                "exclude_clients": [2]},
                   eval={"max_samples": 8, "per_client": False}, data={"domains": ["tech_support", "trivia"]},
                   network={"enabled": False}, **{"async": {"clock": "wall", "concurrency": 2}})
    assert scheme_class(cfg) is WallClockAsyncScheme
    grid = FakeGrid(_nodes(write_shards(cfg, tmp_path / "shards")))
    res = run_experiment(cfg, tmp_path / "run", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    assert res.status == "finished" and len(res.rounds) == 3
    assert res.rounds[-1]["version"] == 6.0 and res.rounds[-1]["wall_clock_s"] > 0
    assert res.rounds[-1]["eval_loss"] < res.rounds[0]["eval_loss"]
    trained = {int(msg.content[m.JOB_KEY]["client-id"]) for msg in grid.sent if msg.metadata.message_type == m.TRAIN}
    assert trained == {0, 1}  # the excluded client is never asked to train
