"""Confidence cascade: the end device answers when sure, the edge device otherwise."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from fedintel.inference.cascade import Cascade, confidence
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate

PROMPTS = [[1, 50 + i, 300 + 7 * i, 2] for i in range(8)]


@pytest.fixture(scope="module")
def edge(model_dirs, key):
    with SplitPipeline.launch(str(model_dirs["large"]), [], 3, key=key) as pipe:  # one device, whole model
        yield pipe


@pytest.fixture(scope="module")
def small(model_dirs):
    return LocalLM(AutoModelForCausalLM.from_pretrained(model_dirs["near"]).eval())


def test_thresholds_move_queries_between_tiers(edge, small):
    large_ref = [greedy_generate(edge, p, 6).tokens for p in PROMPTS]
    all_local = Cascade(small, edge, threshold=0.0, max_new_tokens=6).run(PROMPTS)
    assert all_local.local_fraction == 1.0
    assert [a.tokens for a in all_local.answers] == [greedy_generate(small, p, 6).tokens for p in PROMPTS]
    all_remote = Cascade(small, edge, threshold=1.0, max_new_tokens=6).run(PROMPTS)
    assert all_remote.local_fraction == 0.0 and all_remote.agreement == 1.0
    assert [a.tokens for a in all_remote.answers] == large_ref
    confs = sorted(a.confidence for a in all_local.answers)
    mid = (confs[3] + confs[4]) / 2
    mixed = Cascade(small, edge, threshold=mid, max_new_tokens=6).run(PROMPTS)
    assert mixed.local_fraction == 0.5
    for a, ref in zip(mixed.answers, large_ref, strict=True):
        assert a.served_locally == (a.confidence >= mid)
        if not a.served_locally:
            assert a.tokens == ref
    assert 0.0 < mixed.latency_ratio < all_remote.latency_ratio + 1.0


def test_confidence_methods_and_bad_settings(edge, small):
    import torch

    logits = [torch.tensor([0.0, 0.0]), torch.tensor([10.0, 0.0])]
    assert confidence(logits, [0, 0], "first_prob") == pytest.approx(0.5)
    assert confidence(logits, [0, 0], "min_prob") == pytest.approx(0.5)
    assert 0.5 < confidence(logits, [0, 0], "mean_prob") < 1.0
    with pytest.raises(ValueError, match="unknown confidence method"):
        Cascade(small, edge, method="vibes")
    with pytest.raises(ValueError, match="threshold must be within 0..1"):
        Cascade(small, edge, threshold=2.0)
