"""Cloud-edge-end vertical modes against a large model split over two processes.

Speculative decoding (local draft) equals the target's greedy decoding; the confidence cascade serves
confident queries locally and escalates the rest.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedintel.inference.cascade import Cascade, confidence
from fedintel.inference.speculative import speculative_generate
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate

PROMPT = [1, 504, 3458, 282, 4649, 314, 2]
PROMPTS = [[1, 50 + i, 300 + 7 * i, 2] for i in range(8)]


@pytest.fixture(scope="module")
def target(model_dirs, links):
    with SplitPipeline.launch(str(model_dirs["large"]), [1], 3, security=links) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def small(model_dirs):
    return LocalLM(AutoModelForCausalLM.from_pretrained(model_dirs["near"]).eval())


@pytest.fixture(scope="module")
def reference(model_dirs):
    model = AutoModelForCausalLM.from_pretrained(model_dirs["large"]).eval()
    return greedy_generate(LocalLM(model), PROMPT, 40).tokens


@pytest.mark.parametrize("draft_name,k", [("small", 4), ("near", 3), ("near", 6), ("large", 5)])
def test_speculative_equals_greedy_of_the_large_model(draft_name, k, model_dirs, target, reference):
    draft = LocalLM(AutoModelForCausalLM.from_pretrained(model_dirs[draft_name]).eval())
    res = speculative_generate(draft, target, PROMPT, 40, k=k)
    assert res.tokens == reference
    assert len(set(reference)) > 5  # a varied sequence, not one token repeated
    if draft_name == "large":
        assert res.acceptance_rate == 1.0 and res.rounds == 1 + -(-39 // (k + 1))  # k drafts + 1 bonus per round
    if draft_name == "near":
        assert 0.0 < res.acceptance_rate < 1.0  # both accept and reject paths ran
    assert draft.sessions == {}


def test_greedy_over_the_split_target_matches_too(target, reference):
    assert greedy_generate(target, PROMPT, 40).tokens == reference


def test_bad_k_and_long_prompt(model_dirs, target):
    draft = LocalLM(AutoModelForCausalLM.from_pretrained(model_dirs["small"]).eval())
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        speculative_generate(draft, target, PROMPT, 4, k=0)
    with pytest.raises(ValueError, match="context of 128"):
        speculative_generate(draft, target, list(range(1, 120)), 8, k=4)
    assert torch.get_num_threads() >= 1


def test_thresholds_move_queries_between_tiers(target, small):
    large_ref = [greedy_generate(target, p, 6).tokens for p in PROMPTS]
    all_local = Cascade(small, target, threshold=0.0, max_new_tokens=6).run(PROMPTS)
    assert all_local.local_fraction == 1.0
    assert [a.tokens for a in all_local.answers] == [greedy_generate(small, p, 6).tokens for p in PROMPTS]
    all_remote = Cascade(small, target, threshold=1.0, max_new_tokens=6).run(PROMPTS)
    assert all_remote.local_fraction == 0.0 and all_remote.agreement == 1.0
    assert [a.tokens for a in all_remote.answers] == large_ref
    confs = sorted(a.confidence for a in all_local.answers)
    mid = (confs[3] + confs[4]) / 2
    mixed = Cascade(small, target, threshold=mid, max_new_tokens=6).run(PROMPTS)
    assert mixed.local_fraction == 0.5
    for a, ref in zip(mixed.answers, large_ref, strict=True):
        assert a.served_locally == (a.confidence >= mid)
        if not a.served_locally:
            assert a.tokens == ref
    assert 0.0 < mixed.latency_ratio < all_remote.latency_ratio + 1.0


def test_confidence_methods_and_bad_settings(target, small):
    logits = [torch.tensor([0.0, 0.0]), torch.tensor([10.0, 0.0])]
    assert confidence(logits, [0, 0], "first_prob") == pytest.approx(0.5)
    assert confidence(logits, [0, 0], "min_prob") == pytest.approx(0.5)
    assert 0.5 < confidence(logits, [0, 0], "mean_prob") < 1.0
    with pytest.raises(ValueError, match="unknown confidence method"):
        Cascade(small, target, method="vibes")
    with pytest.raises(ValueError, match="threshold must be within 0..1"):
        Cascade(small, target, threshold=2.0)
