"""Secure aggregation on real SuperNodes (SuperLink + 3 SuperNodes as processes on 127.0.0.1).

(a) What the ServerApp received from a node is uncorrelated with that node's true update; (b) the unmasked
sum is exact: the run's global adapter and losses are the local engine's to the bit; (c) a node killed
(SIGKILL of its process tree) after the key set-up, while training, is dropped and its masks are recovered
from the survivors' Shamir shares; the next round goes on without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedintel.engines.flower.secagg import AUDIT_ENV
from fedintel.engines.local import LocalEngine
from fedintel.experiment import run_experiment
from fedintel.privacy.secagg import encode_fixed_point
from fedintel.privacy.secure_aggregator import masking_input
from fedintel.tracking.checkpoint import latest_checkpoint
from fedintel.training.mods import NO_MODS
from fedintel.trust import build_client_mods
from tests.conftest import tiny_config
from tests.engines.flower_helpers import NUM_NODES, cluster, run_killing_node_when_training, run_rounds

pytestmark = pytest.mark.timeout(420)

JOB_TIMEOUT_S = 30.0


class RecordingEngine(LocalEngine):
    """The local engine, keeping every update it produced (the reference's true deltas)."""

    def __init__(self, world, mods=NO_MODS):
        super().__init__(world, mods)
        self.seen = {}

    def train(self, jobs, on_done=None):
        results = super().train(jobs, on_done)
        for job, r in zip(jobs, results, strict=True):
            self.seen[(job.round_idx, r.client_id)] = r
        return results


def test_supernodes_mask_their_updates_and_a_killed_node_is_recovered(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, federation={"num_clients": NUM_NODES, "clients_per_round": NUM_NODES},
                      peft={"r": 64}, network={"enabled": False}, eval={"max_samples": 8, "per_client": False},
                      privacy={"secure_aggregation": True})
    audit = tmp_path / "audit"
    monkeypatch.setenv(AUDIT_ENV, str(audit))  # inherited by the SuperLink, hence by the ServerApp
    with cluster(tmp_path, cfg, secure=False, warm=True) as (cl, _):
        res = run_killing_node_when_training(cl, cfg, tmp_path / "run", job_timeout=JOB_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rounds, events, status = run_rounds(tmp_path / "run")
    assert status == "finished" and len(rounds) == 3
    # (c) round 1: client 2 shared its secrets, then died; it is dropped and its masks recovered
    assert [r["clients_accepted"] for r in rounds[1:]] == [2.0, 2.0]
    assert rounds[1]["secagg_dropped"] == 1.0
    assert [(e[0], e[1], e[2]) for e in events if e[2] == "failed"] == [(1, 2, "failed"), (2, 2, "failed")]
    assert "is lost" in [e for e in events if e[2] == "failed"][1][3]  # round 2 did not wait for it again

    # (b) the same run on the local engine without client 2: bit-identical adapter and losses
    local_cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"exclude_clients": [2]})})
    engines = []
    local = run_experiment(local_cfg, tmp_path / "local",
                           engine_factory=lambda w: engines.append(RecordingEngine(w, build_client_mods(local_cfg))) or engines[-1])
    assert [r["eval_loss"] for r in rounds] == [r["eval_loss"] for r in local.rounds]
    a, b = latest_checkpoint(tmp_path / "run")["state"]["global"], latest_checkpoint(tmp_path / "local")["state"]["global"]
    assert all(torch.equal(a[k], b[k]) for k in b)

    # (a) what the ServerApp held from client 0 in round 1 against what client 0 actually computed
    received = np.load(audit / "round_1_client_0.npy")
    true = engines[0].seen[(1, 0)]
    plain = encode_fixed_point(masking_input(cfg, true.delta, true.num_samples), cfg.privacy.secagg_frac_bits, 3)
    assert received.dtype == np.uint64 and received.size == plain.size > 100_000 // 4
    x, y = plain.view(np.int64).astype(np.float64), received.view(np.int64).astype(np.float64)
    corr = float(np.corrcoef(x, y)[0, 1])
    assert abs(corr) < 0.05, corr
    assert sorted(p.name for p in audit.iterdir()) == [f"round_{r}_client_{c}.npy" for r in (1, 2) for c in (0, 1)]
    print(f"server-received vs true update of client 0: Pearson r = {corr:+.4f} over {plain.size} values")
