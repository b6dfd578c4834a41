"""Split inference across real processes equals the whole model in one process."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from fedintel.config import ModelConfig
from fedintel.inference.launcher import LaunchError
from fedintel.inference.protocol import Client, Message
from fedintel.inference.split import SplitError, SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate
from fedintel.models.loader import load_base_model

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny():
    return load_base_model(ModelConfig(name="tiny-llama"))


@pytest.fixture(scope="module")
def tiny_split(key):
    with SplitPipeline.launch("tiny-llama", [1], 2, key=key) as pipe:
        yield pipe


def assert_same(split_res, ref_res):
    assert split_res.tokens == ref_res.tokens
    assert len(split_res.logits) == len(ref_res.logits) > 0
    for a, b in zip(split_res.logits, ref_res.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


def test_tiny_split_equals_single_process(tiny, tiny_split):
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    ref = greedy_generate(LocalLM(tiny.model), ids, 12, keep_logits=True)
    out = greedy_generate(tiny_split, ids, 12, keep_logits=True)
    assert_same(out, ref)
    hf = tiny.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert out.tokens == hf[0, len(ids):].tolist()
    assert len(tiny_split.stats.compute_s[-1]) == 2  # both stages computed every step


def test_smollm2_three_stages_equal_single_process(key):
    lm = load_base_model(ModelConfig(name="smollm2-135m", num_layers=4))
    ids = lm.tokenizer(PROMPT)["input_ids"]
    ref = greedy_generate(LocalLM(lm.model), ids, 8, keep_logits=True)
    with SplitPipeline.launch("smollm2-135m", [1, 3], 4, num_layers=4, key=key) as pipe:
        assert [(s.start, s.end) for s in pipe.stages] == [(0, 1), (1, 3), (3, 4)]
        out = greedy_generate(pipe, ids, 8, keep_logits=True)
    assert_same(out, ref)
    assert len(set(out.tokens)) > 1  # a real model, a real answer


def test_prompt_longer_than_context_is_refused(tiny_split):
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        greedy_generate(tiny_split, [5] * 510, 8)
    sid = tiny_split.open_session()
    with pytest.raises(SplitError, match="exceed the model's context"):
        tiny_split.step(sid, torch.tensor([[5] * 600]), 0)


def test_out_of_sync_and_bad_requests_are_clear(tiny_split, key):
    sid = tiny_split.open_session()
    tiny_split.step(sid, torch.tensor([[1, 2, 3]]), 0)
    with pytest.raises(SplitError, match="out of sync.*3 cached tokens, request starts at position 7"):
        tiny_split.step(sid, torch.tensor([[4]]), 7)
    c = Client(tiny_split.addresses[1], key)
    with pytest.raises(Exception, match="expects hidden states"):
        c.request("forward", {"session": "q", "pos": 0}, {"hidden": torch.zeros(1, 2, 3)})
    with pytest.raises(Exception, match="unknown operation"):
        c.request("launch_missiles")
    c.close()


def test_tampered_and_replayed_frames_never_reach_the_model(tiny_split, key):
    c = Client(tiny_split.addresses[0], key)
    before = c.request("ping").meta["forwards"]
    ch = c.channel()
    frame = bytearray(ch.encode(Message("forward", {"session": "t", "pos": 0, "n_logits": 1},
                                        {"input_ids": torch.tensor([[1, 2, 3]])})))
    frame[-33] ^= 0x04  # last payload byte
    ch.send_bytes(bytes(frame))
    reply = ch.recv()
    assert reply.op == "error" and reply.meta["kind"] == "IntegrityError"
    c.close()
    ch = c.channel()
    frame = ch.encode(Message("forward", {"session": "r", "pos": 0}, {"input_ids": torch.tensor([[1, 2]])}))
    ch.send_bytes(frame)
    assert ch.recv().op == "ok"
    ch.send_bytes(frame)
    reply = ch.recv()
    assert reply.meta["kind"] == "ReplayError"
    c.close()
    assert c.request("ping").meta["forwards"] == before + 1  # only the genuine frame ran
    c.close()


def test_oversized_message_is_rejected_by_the_device(tiny_split, key):
    c = Client(tiny_split.addresses[0], key, max_frame_bytes=1 << 30)
    with pytest.raises(Exception, match="exceeds max_frame_bytes"):
        c.request("forward", {"session": "big", "pos": 0}, {"input_ids": torch.zeros(1, 9_000_000, dtype=torch.int64)})
    c.close()


def test_wrong_order_and_wrong_role_are_refused(tiny_split, key):
    with pytest.raises(SplitError, match="expected it to start at layer 0"):
        SplitPipeline.connect(list(reversed(tiny_split.addresses)), key)
    with pytest.raises(SplitError, match="last stage is missing"):
        SplitPipeline.connect(tiny_split.addresses[:1], key)
    with pytest.raises(SplitError, match="unreachable"):
        SplitPipeline.connect(["127.0.0.1:1"], key)
    assert tiny_split.step(tiny_split.open_session(), torch.tensor([[1]]), 0).argmax.numel() == 1  # untouched


def test_bad_worker_arguments_fail_at_launch(key):
    with pytest.raises(LaunchError, match="not a non-empty slice"):
        SplitPipeline.launch("tiny-llama", [], 2, key=key, extra_args=["--layers", "0:5"])


def test_a_dead_stage_gives_a_clear_error_without_hanging(tiny_split, tiny):
    ids = tiny.tokenizer("hello")["input_ids"]
    pid = tiny_split.stages[1].pid
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(SplitError, match="stage 0 .* failed: .*next stage at .* failed"):
        greedy_generate(tiny_split, ids, 4)
    assert time.monotonic() - t0 < 10
