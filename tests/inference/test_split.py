"""Split inference across real processes equals the whole model in one process."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from fedintel.config import ModelConfig
from fedintel.inference.launcher import LaunchError
from fedintel.inference.protocol import (
    Client,
    HandshakeError,
    IntegrityError,
    Message,
    PeerClosed,
    parse_address,
)
from fedintel.inference.split import SplitError, SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate
from fedintel.models.loader import load_base_model
from tests.inference.mitm import Mitm

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny():
    return load_base_model(ModelConfig(name="tiny-llama"))


@pytest.fixture(scope="module")
def tiny_split(links):
    with SplitPipeline.launch("tiny-llama", [1], 2, security=links) as pipe:
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


def test_smollm2_three_stages_equal_single_process(links):
    lm = load_base_model(ModelConfig(name="smollm2-135m", num_layers=4))
    ids = lm.tokenizer(PROMPT)["input_ids"]
    ref = greedy_generate(LocalLM(lm.model), ids, 8, keep_logits=True)
    with SplitPipeline.launch("smollm2-135m", [1, 3], 4, num_layers=4, security=links) as pipe:
        assert [(s.start, s.end) for s in pipe.stages] == [(0, 1), (1, 3), (3, 4)]
        out = greedy_generate(pipe, ids, 8, keep_logits=True)
    assert_same(out, ref)
    assert len(set(out.tokens)) > 1  # a real model, a real answer


def test_bf16_stages_equal_a_bf16_single_process(links):
    """Stages honour the runtime's precision (--dtype): they match a bf16 model, not the fp32 one."""
    from fedintel.runtime import Runtime

    lm16 = load_base_model(ModelConfig(name="smollm2-135m", num_layers=4), Runtime(torch.device("cpu"), torch.bfloat16))
    lm32 = load_base_model(ModelConfig(name="smollm2-135m", num_layers=4))
    assert next(lm16.model.parameters()).dtype == torch.bfloat16
    ids = lm16.tokenizer(PROMPT)["input_ids"]
    ref16 = greedy_generate(LocalLM(lm16.model), ids, 4, keep_logits=True)
    ref32 = greedy_generate(LocalLM(lm32.model), ids, 4, keep_logits=True)
    with SplitPipeline.launch("smollm2-135m", [2], 4, num_layers=4, security=links,
                              extra_args=["--device", "cpu", "--dtype", "bfloat16"]) as pipe:
        out = greedy_generate(pipe, ids, 4, keep_logits=True)

    def dmax(a, b):
        return max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits, strict=True))

    assert out.tokens == ref16.tokens
    assert dmax(out, ref16) < 0.25 * dmax(out, ref32), (dmax(out, ref16), dmax(out, ref32))


def test_prompt_longer_than_context_is_refused(tiny_split):
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        greedy_generate(tiny_split, [5] * 510, 8)
    sid = tiny_split.open_session()
    with pytest.raises(SplitError, match="exceed the model's context"):
        tiny_split.step(sid, torch.tensor([[5] * 600]), 0)


def test_out_of_sync_and_bad_requests_are_clear(tiny_split, links):
    sid = tiny_split.open_session()
    tiny_split.step(sid, torch.tensor([[1, 2, 3]]), 0)
    with pytest.raises(SplitError, match="out of sync.*3 cached tokens, request starts at position 7"):
        tiny_split.step(sid, torch.tensor([[4]]), 7)
    c = Client(tiny_split.addresses[1], links)
    with pytest.raises(Exception, match="expects hidden states"):
        c.request("forward", {"session": "q", "pos": 0}, {"hidden": torch.zeros(1, 2, 3)})
    with pytest.raises(Exception, match="unknown operation"):
        c.request("launch_missiles")
    c.close()


def test_tampered_and_replayed_frames_never_reach_the_model(tiny_split, links):
    c = Client(tiny_split.addresses[0], links)
    before = c.request("ping").meta["forwards"]
    host, port = parse_address(tiny_split.addresses[0])
    mitm = Mitm((host, port))
    try:  # a record changed in transit fails TLS's integrity check on the device
        t = Client(mitm.address, links, server_name="stage0")
        t.request("ping")
        mitm.arm("flip")
        with pytest.raises((IntegrityError, PeerClosed)):
            t.request("forward", {"session": "t", "pos": 0, "n_logits": 1}, {"input_ids": torch.tensor([[1, 2, 3]])})
        t.close()
    finally:
        mitm.close()
    ch = c.channel()  # a frame sent again on the same connection is a replay
    frame = ch.encode(Message("forward", {"session": "r", "pos": 0}, {"input_ids": torch.tensor([[1, 2]])}))
    ch.send_bytes(frame)
    assert ch.recv().op == "ok"
    ch.send_bytes(frame)
    reply = ch.recv()
    assert reply.meta["kind"] == "ReplayError"
    c.close()
    assert c.request("ping").meta["forwards"] == before + 1  # only the genuine frame ran
    c.close()


def test_launch_gives_each_stage_its_own_certificate_of_a_fresh_ca(tiny, links):
    with SplitPipeline.launch("tiny-llama", [1], 2) as pipe:  # no security given: a fresh CA for this launch
        ca_dir = pipe.security.cert_dir
        assert ca_dir is not None and (ca_dir / "ca.crt").is_file()
        assert [p.name for p in sorted(ca_dir.glob("*.crt"))] == ["ca.crt", "origin.crt", "stage0.crt", "stage1.crt"]
        assert all((ca_dir / f"{n}.key").stat().st_mode & 0o077 == 0 for n in ("ca", "origin", "stage0", "stage1"))
        assert [pipe.clients[i].channel().peer_name for i in (0, 1)] == ["stage0", "stage1"]
        assert [pipe.clients[i].request("ping").meta["name"] for i in (0, 1)] == ["stage0", "stage1"]
        ids = tiny.tokenizer("hello there")["input_ids"]
        assert greedy_generate(pipe, ids, 3).tokens == greedy_generate(LocalLM(tiny.model), ids, 3).tokens
        with pytest.raises(HandshakeError):  # a process of another CA (the test session's) is not let in
            Client(pipe.addresses[0], links).request("ping")
    assert not ca_dir.exists()  # the launch's CA and keys go with it


def test_oversized_message_is_rejected_by_the_device(tiny_split, links):
    c = Client(tiny_split.addresses[0], links, max_frame_bytes=1 << 30)
    with pytest.raises(Exception, match="exceeds max_frame_bytes"):
        c.request("forward", {"session": "big", "pos": 0}, {"input_ids": torch.zeros(1, 9_000_000, dtype=torch.int64)})
    c.close()


def test_wrong_order_and_wrong_role_are_refused(tiny_split, links):
    with pytest.raises(SplitError, match="expected it to start at layer 0"):
        SplitPipeline.connect(list(reversed(tiny_split.addresses)), links)
    with pytest.raises(SplitError, match="last stage is missing"):
        SplitPipeline.connect(tiny_split.addresses[:1], links)
    with pytest.raises(SplitError, match="unreachable"):
        SplitPipeline.connect(["127.0.0.1:1"], links)
    assert tiny_split.step(tiny_split.open_session(), torch.tensor([[1]]), 0).argmax.numel() == 1  # untouched


def test_bad_worker_arguments_fail_at_launch(links):
    with pytest.raises(LaunchError, match="not a non-empty slice"):
        SplitPipeline.launch("tiny-llama", [], 2, security=links, extra_args=["--layers", "0:5"])


def test_a_dead_stage_gives_a_clear_error_without_hanging(tiny_split, tiny):
    ids = tiny.tokenizer("hello")["input_ids"]
    pid = tiny_split.stages[1].pid
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(SplitError, match="stage 0 .* failed: .*next stage at .* failed"):
        greedy_generate(tiny_split, ids, 4)
    assert time.monotonic() - t0 < 10
