"""Draft/target pairs and cascades served over the OpenAI routes (tiny-llama: a 1-layer early exit drafts for
the 2-layer model): a speculative path and a plain path both serve ``base``; a cascade path serves ``casc``
(five device processes in all). Plus the configuration errors of path kinds (no processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from fedintel.inference.stage import greedy_generate
from fedintel.serving.backends import PathLM
from fedintel.serving.config import ServeConfig, ServeConfigError, ServePathConfig, load_serve_config
from fedintel.serving.server import serve_in_thread
from fedintel.serving.service import path_spec
from tests.serving.conftest import run_direct

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):"]


@pytest.fixture(scope="module")
def srv():
    cfg = ServeConfig.model_validate({
        "model": {"name": "tiny-llama"},
        "paths": [  # in this order: an idle service sends base requests to the speculative path
            {"name": "spec", "kind": "speculative", "draft": {"num_layers": 1}, "k": 3},
            {"name": "plain"},
            {"name": "casc", "kind": "cascade", "draft": {"num_layers": 1}, "threshold": 0.5},
        ],
        "limits": {"max_tokens": 64, "default_max_tokens": 16},
    })
    running = serve_in_thread(cfg)
    try:
        yield running
    finally:
        running.stop()


def complete(srv, model: str, prompt: str, max_tokens: int, **kw) -> httpx.Response:
    return httpx.post(srv.url + "/v1/completions", timeout=120,
                      json={"model": model, "prompt": prompt, "max_tokens": max_tokens, **kw})


def plain_greedy(srv, prompt: str, max_tokens: int) -> str:
    """What the plain path answers alone (continuous-batching scheduler, greedy)."""
    service = srv.service
    reqs, _ = run_direct(service.schedulers["plain"], [service.prompt_ids(prompt)], max_tokens, service.eos_ids)
    return service.decode(reqs[0].generated)


def test_models_and_health(srv):
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok"
    kinds = {n: p["kind"] for n, p in h["paths"].items()}
    assert kinds == {"spec": "speculative", "plain": "single", "casc": "cascade"}
    assert [d["name"] for d in h["paths"]["spec"]["devices"]] == ["spec-draft", "spec-target"]
    assert [d["name"] for d in h["paths"]["casc"]["devices"]] == ["casc-small", "casc-large"]
    models = {m["id"]: m["fedintel"] for m in httpx.get(srv.url + "/v1/models").json()["data"]}
    assert set(models) == {"base", "casc"}
    assert models["base"]["paths"] == ["spec", "plain"]
    assert models["casc"]["kind"] == "cascade" and models["casc"]["small_layers"] == 1
    assert models["casc"]["large"] == "base" and models["casc"]["threshold"] == 0.5


def test_speculative_gives_the_target_greedy_tokens(srv):
    for prompt in PROMPTS:
        j = complete(srv, "base", prompt, 20).json()
        f = j["fedintel"]
        assert f["path"] == "spec" and f["path_kind"] == "speculative", f
        assert f["draft_devices"] == ["spec-draft"] and f["target_devices"] == ["spec-target"]
        assert f["k"] == 3 and f["drafted"] > 0 and 0 <= f["accepted"] <= f["drafted"]
        assert f["acceptance_rate"] == round(f["accepted"] / f["drafted"], 4)
        n = j["usage"]["completion_tokens"]
        assert f["target_calls"] <= n and n <= f["target_calls"] + f["accepted"]  # each call: accepted + 1
        assert len(f["stage_compute_s"]) == 2 and f["prefill_s"] > 0
        assert j["choices"][0]["text"] == plain_greedy(srv, prompt, 20)
    # streamed as each verification commits tokens, with the same text
    r = complete(srv, "base", PROMPTS[0], 20, stream=True)
    lines = [ln for ln in r.text.split("\n\n") if ln.startswith("data: {")]
    assert len(lines) > 2
    whole = complete(srv, "base", PROMPTS[0], 20).json()["choices"][0]["text"]
    assert "".join(json.loads(ln[6:])["choices"][0]["text"] for ln in lines) == whole
    for s in srv.service.schedulers.values():  # every session was closed on every device
        assert all(p["sessions"] == 0 for p in s.path.ping())


def test_speculative_context_leaves_room_for_the_drafts(srv):
    prompt = srv.service.decode(srv.service.prompt_ids("word " * 600)[:495])
    r = complete(srv, "base", prompt, 16)  # about 511 tokens in all: within 512, over 512 - k
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "509" in r.json()["error"]["message"]  # 512 less k = 3: a verification looks k tokens ahead


def test_cascade_answers_locally_or_escalates(srv, monkeypatch):
    service = srv.service
    casc = service.schedulers["casc"]
    prompt = PROMPTS[1]
    ids = service.prompt_ids(prompt)
    small_alone = service.decode(greedy_generate(PathLM(casc.path.small), ids, 12,
                                                 service.tokenizer.eos_token_id).tokens)
    for threshold, escalated in ((0.0, False), (1.0, True)):
        monkeypatch.setattr(casc.path.spec, "threshold", threshold)
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120,
                       json={"model": "casc", "messages": [{"role": "user", "content": prompt}], "max_tokens": 12})
        assert r.status_code == 200, r.text
        f = r.json()["fedintel"]
        assert f["path_kind"] == "cascade" and f["served_by"] == "casc" and f["escalated"] is escalated
        assert f["threshold"] == threshold and 0 < f["confidence"] <= 1
        assert f["answered_by"] == (["casc-large"] if escalated else ["casc-small"])
        j = complete(srv, "casc", prompt, 12).json()
        assert j["fedintel"]["escalated"] is escalated and j["model"] == "casc"
        # escalated: the large model's greedy answer (the base model's); else the small model's own
        assert j["choices"][0]["text"] == (plain_greedy(srv, prompt, 12) if escalated else small_alone)
    assert all(p["sessions"] == 0 for p in casc.path.ping())


def test_speculative_path_fails_over_to_the_plain_path(srv, monkeypatch):
    """The target dies after the first verification: the request continues on the plain path from the
    tokens it has, and the answer is still the model's greedy answer."""
    service = srv.service
    service.cfg.restart_dead = False  # for the rest of the module: no restart racing the teardown
    spec = service.schedulers["spec"]
    target = spec.path.large
    real_call = target.call
    forwards = []

    def call_then_crash(op: str, meta: dict, tensors=None, timeout=None):
        out = real_call(op, meta, tensors, timeout)
        if op == "forward":
            forwards.append(meta["pos"])
            if len(forwards) == 2:
                service.group.kill(target.workers[0])
        return out

    monkeypatch.setattr(target, "call", call_then_crash)
    r = complete(srv, "base", PROMPTS[2], 24)
    assert r.status_code == 200, r.text
    f = r.json()["fedintel"]
    assert f["failovers"] == 1 and f["path"] == "plain" and spec.down is not None
    assert r.json()["choices"][0]["text"] == plain_greedy(srv, PROMPTS[2], 24)
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and not h["paths"]["spec"]["up"]  # base still has a live path


@pytest.mark.parametrize(("path", "message"), [
    ({"name": "x", "kind": "single", "cuts": [1]}, "paths.x.cuts: kind single"),
    ({"name": "x", "kind": "split"}, "paths.x.cuts: kind split needs"),
    ({"name": "x", "kind": "speculative"}, "paths.x.draft: kind speculative needs a draft"),
    ({"name": "x", "draft": {"num_layers": 1}}, "paths.x.draft: only kind speculative or cascade"),
    ({"name": "x", "kind": "cascade", "draft": {"num_layers": 1}, "k": 2}, "paths.x.k: only kind speculative"),
    ({"name": "x", "kind": "speculative", "draft": {"num_layers": 1}, "threshold": 0.3},
     "paths.x.threshold: only kind cascade"),
    ({"name": "x", "kind": "speculative", "draft": {}}, "paths.x.draft: the draft is the served model itself"),
    ({"name": "auto", "kind": "cascade", "draft": {"num_layers": 1}}, "paths.auto: a cascade serves"),
    ({"name": "x", "kind": "cascade", "draft": {"num_layers": 1}, "confidence": "vibes"}, "paths.0.confidence"),
])
def test_path_kind_errors_name_the_field(tmp_path, path, message):
    f = tmp_path / "serve.yaml"
    f.write_text(yaml.safe_dump({"model": {"name": "tiny-llama"}, "paths": [path]}))
    with pytest.raises(ServeConfigError, match=message.replace(".", r"\.")):
        load_serve_config(f)


def test_path_spec_refusals(tmp_path):
    p = ServePathConfig(name="x", kind="speculative", draft={"num_layers": 2})
    with pytest.raises(ServeConfigError, match=r"paths\.x\.draft\.num_layers: a draft of 2 layers"):
        path_spec(p, {}, "tiny-llama", 2)
    p = ServePathConfig(name="x", kind="cascade", draft={"model": str(tmp_path / "nope")})
    with pytest.raises(ServeConfigError, match=r"paths\.x\.draft\.model"):
        path_spec(p, {}, "tiny-llama", 2)
    p = ServePathConfig(name="global", kind="cascade", draft={"num_layers": 1})
    with pytest.raises(ServeConfigError, match="is an adapter"):
        path_spec(p, {"global": tmp_path}, "tiny-llama", 2)
    spec = path_spec(ServePathConfig(name="c", kind="cascade", model="global", cuts=[1], draft={"num_layers": 1},
                                     threshold=0.2, confidence="min_prob"), {"global": tmp_path}, "tiny-llama", 2)
    assert (spec.model_id, spec.adapter, spec.kind, spec.threshold, spec.confidence) == \
        ("c", tmp_path, "cascade", 0.2, "min_prob")
    assert (spec.draft.model, spec.draft.layers, spec.draft.num_layers) == ("tiny-llama", 1, 1)


def test_serve_yaml_pair_examples_are_valid():
    """The commented speculative and cascade paths of examples/serve.yaml validate once uncommented."""
    path = Path(__file__).parents[2] / "examples" / "serve.yaml"
    commented = re.findall(r"^  # (- \{name:.*(?:\n  #    .*)*)", path.read_text(), re.M)
    extra = yaml.safe_load("\n".join(re.sub(r"\n  #    ", " ", c) for c in commented))
    data = yaml.safe_load(path.read_text())
    cfg = ServeConfig.model_validate({**data, "paths": data["paths"] + extra})
    assert [p.path_kind for p in cfg.paths] == ["single", "split", "speculative", "cascade"]
