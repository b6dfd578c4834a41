"""Speculative decoding (local draft, remote split target) equals the target's greedy decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from fedintel.inference.speculative import speculative_generate
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate

PROMPT = [1, 504, 3458, 282, 4649, 314, 2]


@pytest.fixture(scope="module")
def target(model_dirs, key):
    with SplitPipeline.launch(str(model_dirs["large"]), [1], 3, key=key) as pipe:
        yield pipe


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
