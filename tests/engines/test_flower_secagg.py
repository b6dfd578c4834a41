"""Secure aggregation on the Flower engine, over the in-process fake Grid (real ClientApp, no sockets): each
node masks its own update, the server holds masked vectors only, the sum equals the local simulation's to the
bit, and a client lost after the key set-up is recovered. The real-SuperNode test is ``test_flower_secagg_nodes``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedintel.config import ConfigError
from fedintel.engines.flower import messages as m
from fedintel.engines.flower import secagg as fs
from fedintel.engines.flower.engine import FlowerEngine
from fedintel.engines.flower.shards import write_shards
from fedintel.experiment import run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.types import MASKED_KEY
from fedintel.world import build_world
from tests.engines.test_flower_engine import FakeGrid, _metrics, _nodes


class TrainLostGrid(FakeGrid):
    """Like FakeGrid, but ``lose_train`` nodes answer the key set-up and never reply to a train job (killed
    after sharing their secrets, before uploading)."""

    def __init__(self, *args, lose_train=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.lose_train = set(lose_train)

    def push_messages(self, messages):
        messages = list(messages)
        keep = [msg for msg in messages
                if not (msg.metadata.dst_node_id in self.lose_train and msg.metadata.message_type == m.TRAIN)]
        ids = super().push_messages(keep)
        lost = [msg for msg in messages if msg not in keep]
        for msg in lost:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent.append(msg)
        by_msg = dict(zip([id(x) for x in keep], ids, strict=True))
        return [by_msg.get(id(msg), msg.metadata.message_id) for msg in messages]


def _secagg_cfg(tiny_cfg, tmp_path, **privacy):
    cfg = tiny_cfg(federation={"num_clients": 3, "clients_per_round": 3}, eval={"max_samples": 8, "per_client": False},
                   network={"enabled": False}, privacy={"secure_aggregation": True, **privacy})
    return cfg, _nodes(write_shards(cfg, tmp_path / "shards"), 3)


@pytest.mark.parametrize("privacy", [{}, {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 0.5}],
                         ids=["mean", "central-dp"])
def test_nodes_mask_and_the_unmasked_sum_is_the_local_simulations_to_the_bit(tiny_cfg, tmp_path, monkeypatch, privacy):
    cfg, nodes = _secagg_cfg(tiny_cfg, tmp_path, **privacy)
    monkeypatch.setenv(fs.AUDIT_ENV, str(tmp_path / "audit"))
    local = run_experiment(cfg, tmp_path / "local")  # every party in one process (the simulation)
    grid = FakeGrid(nodes)
    flower = run_experiment(cfg, tmp_path / "flower", engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0))
    drop = {"cum_bytes_up", "bytes_up", "cum_bytes_cloud"}  # masked uploads are 8 bytes per value (honest accounting), not 4
    assert [{k: v for k, v in r.items() if k not in drop} for r in _metrics(flower.rounds)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _metrics(local.rounds)]
    a, b = latest_checkpoint(tmp_path / "flower")["state"]["global"], latest_checkpoint(tmp_path / "local")["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    n = sum(v.numel() for v in b.values()) + (0 if privacy else 1)
    assert flower.rounds[1]["bytes_up"] == 3 * 8 * n
    # no train reply carried a delta; every node ran the four steps
    kinds = [msg.metadata.message_type for msg in grid.sent]
    assert {k: kinds.count(k) for k in set(kinds)} == {"query": 3, m.TRAIN: 6, fs.KEYS: 6, fs.SHARES: 6, fs.UNMASK: 6}
    saved = sorted((tmp_path / "audit").glob("*.npy"))
    assert len(saved) == 6 and all(np.load(p).dtype == np.uint64 and np.load(p).size == n for p in saved)


def test_a_client_lost_after_sharing_its_secrets_is_recovered(tiny_cfg, tmp_path):
    cfg, nodes = _secagg_cfg(tiny_cfg, tmp_path)
    run_experiment(cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"exclude_clients": [2]})}), tmp_path / "two")
    grid = TrainLostGrid(nodes, lose_train=[102])
    res = run_experiment(cfg, tmp_path / "flower",
                         engine_factory=lambda w: FlowerEngine(grid, w, poll_interval=0.0, job_timeout=1.0))
    assert res.status == "finished"
    assert [r["clients_accepted"] for r in res.rounds[1:]] == [2.0, 2.0]
    assert res.rounds[1]["secagg_dropped"] == 1.0
    # the survivors' sum (client 2's dangling masks recovered from the Shamir shares) is the two-client mean
    a, b = latest_checkpoint(tmp_path / "flower")["state"]["global"], latest_checkpoint(tmp_path / "two")["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    # round 1: client 2 took part in the set-up and was dropped at unmasking; round 2: its node is lost
    r1 = [msg for msg in grid.sent if msg.metadata.message_type == fs.UNMASK and msg.metadata.group_id == fs.UNMASK]
    assert {tuple(msg.content[fs.SECAGG_KEY]["dropped"]) for msg in r1} == {(2,), (-1,)}


def test_node_refuses_to_reveal_twice_or_without_uploading(tiny_cfg, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    rec = {"session": "abc123", "round": 1, "frac-bits": 32}
    keys = {c: fs.node_keys(RecordDict({fs.SECAGG_KEY: ConfigRecord({**rec, "client-id": c})}), store)[fs.SECAGG_KEY]
            for c in (0, 1, 2)}
    share = {**rec, "threshold": 2, "participants": [0, 1, 2], "c-pks": [keys[c]["c-pk"] for c in (0, 1, 2)],
             "s-pks": [keys[c]["s-pk"] for c in (0, 1, 2)]}
    sealed = {c: fs.node_shares(RecordDict({fs.SECAGG_KEY: ConfigRecord({**share, "client-id": c})}), store)[fs.SECAGG_KEY]
              for c in (0, 1, 2)}
    unmask = RecordDict({fs.SECAGG_KEY: ConfigRecord({**rec, "client-id": 0, "survivors": [0, 1], "dropped": [2]})})
    from fedintel.privacy.secagg import SecAggError, open_bundle

    with pytest.raises(SecAggError, match="uploaded no masked update"):
        fs.node_unmask(unmask, store)
    # a bundle sealed for client 1 does not open as client 0's, nor for another round
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    with pytest.raises(SecAggError, match="does not open"):
        open_bundle(bytes(sealed[2]["sealed"][1]), X25519PrivateKey.generate(), keys[2]["c-pk"], "abc123", 1, 2, 0)
    for c in (0, 1):
        job = ConfigRecord({**rec, "client-id": c, "participants": [0, 1, 2], "share-owners": [0, 1, 2],
                            "shares": [sealed[o]["sealed"][c] for o in (0, 1, 2)]})
        words = fs.node_mask(job, {"w": torch.ones(5)}, store)["words"].numpy()
        assert words.dtype == np.uint64 and words.size == 5
    out = fs.node_unmask(unmask, store)[fs.SECAGG_KEY]
    assert "reveal" in out
    with pytest.raises(SecAggError, match="holds no secrets"):  # secrets are gone after one reveal
        fs.node_unmask(unmask, store)


def test_flower_secure_aggregation_refuses_what_it_cannot_serve(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="max_update_norm"):
        tiny_cfg(engine="flower", privacy={"secure_aggregation": True}, federation={"max_update_norm": 5.0})
    with pytest.raises(ConfigError, match="scheme hierarchical"):
        tiny_cfg(engine="flower", privacy={"secure_aggregation": True}, federation={"scheme": "hierarchical"})
    cfg = tiny_cfg(privacy={"secure_aggregation": True}, federation={"scheme": "clustered", "num_clients": 3},
                   clustering={"method": "similarity", "num_clusters": 2})
    with pytest.raises(ConfigError, match="one key set-up per synchronous round"):
        FlowerEngine(FakeGrid({}), build_world(cfg))


def test_a_train_reply_with_a_plaintext_delta_is_refused_under_secure_aggregation(tiny_cfg, tmp_path):
    cfg, nodes = _secagg_cfg(tiny_cfg, tmp_path)
    world = build_world(cfg)
    eng = FlowerEngine(FakeGrid(nodes), world, poll_interval=0.0)
    from fedintel.engines.flower.engine import JobHandle
    from fedintel.types import TrainJob, Update

    upd = Update(0, {k: torch.zeros_like(v) for k, v in world.initial_state.items()}, 4, 0, 1.0, 1, 1)
    job = Message(RecordDict(), 100, m.TRAIN)
    job.metadata.__dict__["_message_id"] = job.object_id
    eng._on_reply(JobHandle(TrainJob(0, world.initial_state, 0, 1), 0, node_id=100),
                  Message(m.reply_content(upd), reply_to=job))  # a node that sends its plaintext delta
    (_, result), = eng._done.values()
    assert result.kind == "failed" and "masked update, not a delta" in result.reason
    assert MASKED_KEY not in upd.delta
