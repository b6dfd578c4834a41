"""oneDNN-prepacked linears (inference/packing.py): the same outputs as nn.Linear, refused where they cannot
run, and a packed SmolLM2 serving device that decodes what the unpacked one does, batched as alone."""

import pytest
import torch

from fedintel.inference.packing import PackedLinear, pack_linears, packing_available
from fedintel.inference.protocol import Message
from fedintel.serving.device import ServingWorker, WorkerError, build_parser

pytestmark = pytest.mark.skipif(packing_available("cpu", torch.float32) is not None,
                                reason="this PyTorch build has no oneDNN linear")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (16, 64), (2, 5, 64)])
def test_packed_linear_matches_nn_linear(bias, shape):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        want = lin(x)
        got = PackedLinear(lin)(x)
    assert got.shape == want.shape == (*shape[:-1], 96)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got, torch.zeros_like(got))


def test_bfloat16_packed_linear_casts_its_input_like_autocast():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        got = PackedLinear(lin)(x)  # a float32 input, as an RMSNorm may hand over
        want = lin(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_pack_linears_replaces_every_linear_once_and_keeps_the_rest():
    shared = torch.nn.Linear(8, 8)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), shared,
                              torch.nn.Sequential(shared, torch.nn.LayerNorm(8)))
    x = torch.randn(2, 4)
    with torch.inference_mode():
        want = net(x)
        assert pack_linears(net) == 2  # the shared linear is packed once
        got = net(x)
    assert not any(type(m) is torch.nn.Linear for m in net.modules())
    assert net[2] is net[3][0] and isinstance(net[2], PackedLinear)
    assert isinstance(net[3][1], torch.nn.LayerNorm)
    assert torch.allclose(got, want, atol=1e-5)


def test_refused_where_it_cannot_run():
    assert "float16" in packing_available("cpu", torch.float16)
    assert "CPU" in packing_available("cuda", torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4).half())
    with pytest.raises(ValueError, match="float16"):
        pack_linears(net)
    assert type(net[0]) is torch.nn.Linear  # nothing replaced


def test_device_option_on_refuses_a_dtype_it_cannot_pack():
    with pytest.raises(WorkerError, match="--pack-weights on: .*float16"):
        ServingWorker(build_parser().parse_args(["--model", "tiny-llama", "--insecure", "--dtype", "float16",
                                                 "--pack-weights", "on"]), None)


PROMPTS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "Name a primary colour.",
           "What is 2 plus 2?"]


def _greedy(w, sessions, prompts, steps):
    """Prefill each prompt alone, then decode all of them together (one batch) for ``steps`` tokens."""
    toks = {}
    for s, ids in zip(sessions, prompts, strict=True):
        reply = w.op_serve_prefill(Message("serve_prefill", {"session": s}, {"input_ids": torch.tensor([ids])}))
        toks[s] = [int(reply.tensors["argmax"][0])]
    for _ in range(steps):
        x = torch.tensor([[toks[s][-1]] for s in sessions])
        out = w.op_serve_decode(Message("serve_decode", {"rows": list(sessions)}, {"input_ids": x}))
        for s, t in zip(sessions, out.tensors["argmax"].tolist(), strict=True):
            toks[s].append(t)
    w.op_serve_end(Message("serve_end", {"sessions": list(sessions)}))
    return [toks[s] for s in sessions]


def test_packed_smollm2_decodes_what_the_unpacked_model_does_batched_and_alone():
    def device(pack):
        return ServingWorker(build_parser().parse_args(["--model", "smollm2-135m", "--insecure", "--threads", "2",
                                                        "--pack-weights", pack]), None)

    plain, packed = device("off"), device("on")
    assert plain.packed_linears == 0 and packed.packed_linears == 30 * 7 + 1  # 7 per layer + the head
    tok = packed.tokenizer
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    steps = 10
    alone = [_greedy(packed, [f"a{i}"], [p], steps)[0] for i, p in enumerate(prompts)]
    together = _greedy(packed, [f"b{i}" for i in range(len(prompts))], prompts, steps)
    unpacked = _greedy(plain, [f"c{i}" for i in range(len(prompts))], prompts, steps)
    assert together == alone
    assert unpacked == alone
    text = tok.decode(alone[0])
    assert "Paris" in text, text


def test_a_serving_device_computes_on_the_thread_that_packed_its_weights():
    import threading

    class Where(ServingWorker):
        def op_where(self, msg):
            return Message("ok", {"thread": threading.current_thread().name})

        def _pack(self, mode, batch_hint):
            self.packed_on = threading.current_thread().name
            return super()._pack(mode, batch_hint)

    from fedintel.inference.protocol import LinkSecurity

    w = Where(build_parser().parse_args(["--model", "tiny-llama", "--insecure"]), LinkSecurity.plaintext())
    assert w.packed_linears > 0 and w.packed_on.startswith("device-compute")
    seen = set()

    def call():  # as the link server does: each connection on a thread of its own
        seen.add(w.handle(Message("where")).meta["thread"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {w.packed_on}
    assert w.handle(Message("ping")).meta["packed_linears"] == w.packed_linears


def test_a_plain_inference_device_packs_by_default_and_computes_on_the_packing_thread():
    """``fedintel infer`` devices (the plain worker): packed greedy answers equal unpacked ones, and the
    forward of a request that arrives on a connection thread runs on the thread that packed the weights."""
    import threading

    from fedintel.inference.protocol import LinkSecurity
    from fedintel.inference.worker import Worker
    from fedintel.inference.worker import build_parser as plain_parser

    def device(*flags):
        return Worker(plain_parser().parse_args(["--model", "smollm2-135m", "--insecure", "--threads", "2", *flags]),
                      LinkSecurity.plaintext())

    packed, plain = device(), device("--pack-weights", "off")
    assert packed.packed_linears == 30 * 7 + 1 and plain.packed_linears == 0
    assert packed.handle(Message("ping")).meta["packed_linears"] == packed.packed_linears
    ask = Message("generate", {"prompt": "The capital of France is", "max_new_tokens": 6})
    a, b = packed.handle(ask), plain.handle(ask)
    assert a.tensors["tokens"].tolist() == b.tensors["tokens"].tolist() and "Paris" in a.meta["text"]
    scores = Message("score", {"texts": ["The cat sat on the mat.", "Paris is the capital of France."]})
    assert torch.allclose(packed.handle(scores).tensors["loss"], plain.handle(scores).tensors["loss"], atol=1e-4)

    stage, where = packed.stage, []

    class Recording:  # the stage, noting the thread each forward runs on
        def __getattr__(self, name):
            return getattr(stage, name)

        def __call__(self, *args):
            where.append(threading.current_thread())
            return stage(*args)

    packed.stage = Recording()
    ids = torch.tensor([packed.tokenizer("Hello there")["input_ids"]])
    out = []
    t = threading.Thread(target=lambda: out.append(packed.handle(
        Message("forward", {"session": "s", "pos": 0}, {"input_ids": ids}))))
    t.start()
    t.join()
    assert out and out[0].op == "ok" and where == [packed._compute_thread]
    assert packed._compute_thread.name.startswith("device-compute")


def test_a_model_in_the_originating_process_is_packed_like_the_devices():
    from fedintel.config import ModelConfig
    from fedintel.inference.config import InferConfig
    from fedintel.inference.modes.common import pack_local
    from fedintel.inference.stage import quantize_int8
    from fedintel.models.loader import load_base_model

    def tiny():
        return load_base_model(ModelConfig(name="tiny-llama")).model

    assert pack_local(tiny(), InferConfig(pack_weights="off")) == 0
    assert pack_local(quantize_int8(tiny()), InferConfig()) == 0  # int8 linears are not nn.Linear: nothing to pack
    model = tiny()
    ids = torch.tensor([[1, 5, 9, 3]])
    before = model(ids).logits
    assert pack_local(model, InferConfig()) > 0
    assert any(isinstance(m, PackedLinear) for m in model.modules())
    assert torch.allclose(model(ids).logits, before, atol=1e-4)
