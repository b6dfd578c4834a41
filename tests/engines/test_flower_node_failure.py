"""A SuperNode killed mid-round (SIGKILL of its whole process tree): the round completes with the other
clients once the job times out, the next round fails the lost node's client at once, the run finishes and
the failures are recorded. Uses the warm ClientApp launcher (:mod:`fedintel.engines.flower.warm`).
"""

from __future__ import annotations

import pytest

from tests.engines.flower_helpers import cluster, experiment, run_killing_node_when_training, run_rounds

# slow (make test-all): test_flower_secagg_nodes.py kills a SuperNode the same way, with the same timeout and
# "is lost" events, in make test; this is the plain-FedAvg variant of that path.
pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

JOB_TIMEOUT_S = 30.0


def test_killed_supernode_round_completes_without_it(tmp_path):
    cfg = experiment(tmp_path)
    with cluster(tmp_path, cfg, secure=False, warm=True) as (cl, _):
        res = run_killing_node_when_training(cl, cfg, tmp_path / "run", job_timeout=JOB_TIMEOUT_S)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        rounds, events, status = run_rounds(tmp_path / "run")
        assert status == "finished" and len(rounds) == 3
        assert [r["clients_accepted"] for r in rounds[1:]] == [2.0, 2.0]
        assert rounds[2]["eval_loss"] < rounds[0]["eval_loss"]  # the two others kept training
        failed = [e for e in events if e[2] == "failed"]
        assert [(e[0], e[1]) for e in failed] == [(1, 2), (2, 2)]
        assert f"no reply within {JOB_TIMEOUT_S:.0f} s" in failed[0][3]
        assert "is lost" in failed[1][3]  # round 2 did not wait for it again
