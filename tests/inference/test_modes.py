"""``fedintel infer`` modes as library calls: ``run(cfg)`` returns a report whose values a test can check
(the command line only prints it; ``test_cli.py`` runs the split mode, with its device processes, through it)."""

from __future__ import annotations

import pytest

from fedintel.inference.config import InferConfig
from fedintel.inference.modes import plan
from fedintel.inference.modes.multiaccess import _KillAfter
from fedintel.inference.modes.report import ReportTable

TINY = {"model": "tiny-llama", "max_new_tokens": 4, "prompt": "hello",
        "devices": [{"name": "a", "flops_per_s": 1e9}, {"name": "b", "flops_per_s": 1e9}],
        "links": [{"rate_bps": 1e8, "latency_s": 0.001}]}


def test_plan_reports_the_stages_of_the_given_cuts():
    rep = plan.run(InferConfig.model_validate({**TINY, "cuts": [1]}))
    assert rep.plan.stages == [(0, 0, 1), (1, 1, 2)] and rep.device_names == ["a", "b"]
    assert rep.plan.latency_s >= sum(rep.plan.compute_s) > 0 and rep.ok
    table, line = rep.render()
    assert isinstance(table, ReportTable) and [r[:3] for r in table.rows] == [("0", "a", "0:1"), ("1", "b", "1:2")]
    assert line == f"modelled end-to-end latency: {rep.plan.latency_s:.4f} s"


@pytest.mark.parametrize("n, answers, kills", [(0, 0, 1), (2, 1, 0), (2, 5, 1), (None, 5, 0)])
def test_the_node_is_killed_once_after_n_answers(n, answers, kills):
    killed = []
    k = _KillAfter(n, lambda: killed.append(1))
    for _ in range(answers):
        k.answered()
    assert len(killed) == kills
