"""The OpenAI-compatible front over real device processes (SmolLM2 cut to 2 layers): one process and a
2-stage split serving the base model, plus the expert devices of a run's two adapters."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fedintel.serving.config import ServeConfig
from fedintel.serving.server import serve_in_thread
from tests.serving.conftest import make_run_dir

MODEL, LAYERS = "smollm2-135m", 2


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    run = make_run_dir(tmp_path_factory.mktemp("run"), MODEL, LAYERS, ("global", "cluster0"))
    cfg = ServeConfig.model_validate({
        "model": {"name": MODEL, "num_layers": LAYERS},
        "paths": [{"name": "local", "model": "base"}, {"name": "split", "model": "base", "cuts": [1]}],
        "from_run": str(run),
        "limits": {"max_tokens": 64, "default_max_tokens": 16, "max_request_bytes": 8192, "max_concurrency": 32,
                   "max_batch": 8, "prefix_cache": 4},
        "restart_dead": False,
    })
    running = serve_in_thread(cfg)
    try:
        yield running
    finally:
        running.stop()


def post(srv, route: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(srv.url + route, json=body, timeout=120, **kw)


def sse(text: str) -> list:
    events = [line[5:].strip() for line in text.split("\n\n") if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_health_and_models(srv):
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and h["links"] == "mutual TLS"
    assert set(h["paths"]) == {"local", "split", "expert-global", "expert-cluster0"}
    ids = [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
    assert ids == ["base", "cluster0", "global", "auto"]  # adapters in name order
    # limits.prefix_cache reaches every device process
    assert {p["prefix_cache"] for s in srv.service.schedulers.values() for p in s.path.ping()} == {4}
    steps = sum(p["decode_steps"] for p in h["paths"].values())
    r = post(srv, "/v1/completions", {"model": "base", "prompt": "Count: one two", "max_tokens": 5})
    assert r.status_code == 200, r.text
    after = {n: p["decode_steps"] for n, p in httpx.get(srv.url + "/health").json()["paths"].items()}
    assert sum(after.values()) >= steps + (r.json()["usage"]["completion_tokens"] - 1)  # /health's counters move


def test_chat_completion(srv):
    r = post(srv, "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "Hi"}],
                                           "max_tokens": 8})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["model"] == "base"
    assert j["choices"][0]["message"]["role"] == "assistant"
    assert j["usage"]["completion_tokens"] <= 8
    f = j["fedintel"]
    assert f["served_by"] == "base" and f["path"] in ("local", "split")
    assert len(f["stage_compute_s"]) == len(f["devices"]) and f["prefill_s"] > 0


def test_streams_are_openai_sse(srv):
    r = post(srv, "/v1/completions", {"model": "base", "prompt": "The capital of France is", "max_tokens": 6,
                                      "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r.text)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop") and "fedintel" in chunks[-1]
    whole = post(srv, "/v1/completions", {"model": "base", "prompt": "The capital of France is", "max_tokens": 6})
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole.json()["choices"][0]["text"]
    r = post(srv, "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "Hello"}],
                                           "max_tokens": 6, "stream": True})
    chunks = sse(r.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


PROMPTS = ["What is the capital of France?", "Tell me a joke about computers and the people who use them.",
           "2 + 2 =", "Hello", "Name a primary colour.", "Why is the sky blue? Explain it to a child in detail."]


async def _many(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=300) as c:
        rs = await asyncio.gather(*(c.post(url + "/v1/completions", json=b) for b in bodies))
    return [r.json() for r in rs]


def test_batched_answers_equal_alone(srv):
    bodies = [{"model": "base", "prompt": p, "max_tokens": 6 + 5 * i} for i, p in enumerate(PROMPTS)]
    alone = [post(srv, "/v1/completions", b).json() for b in bodies]
    together = asyncio.run(_many(srv.url, bodies))
    assert [a["choices"][0]["text"] for a in alone] == [t["choices"][0]["text"] for t in together]
    assert [a["usage"] for a in alone] == [t["usage"] for t in together]
    assert all(a["fedintel"]["mean_batch"] <= 1 for a in alone)
    assert max(t["fedintel"]["mean_batch"] for t in together) > 1  # they really were decoded together


def test_adapters_per_request(srv):
    msgs = [{"role": "user", "content": "Tell me about the weather."}]
    out = {}
    for model in ("base", "global", "cluster0"):
        j = post(srv, "/v1/chat/completions", {"model": model, "messages": msgs, "max_tokens": 8}).json()
        assert j["model"] == model and j["fedintel"]["served_by"] == model
        out[model] = j["choices"][0]["message"]["content"]
    assert post(srv, "/v1/chat/completions", {"model": MODEL, "messages": msgs, "max_tokens": 2}).json()["model"] == "base"
    j = post(srv, "/v1/chat/completions", {"model": "auto", "messages": msgs, "max_tokens": 8}).json()
    f = j["fedintel"]
    assert f["requested"] == "auto" and f["served_by"] in ("global", "cluster0") and j["model"] == f["served_by"]
    assert set(f["route_scores"]) == {"global", "cluster0"}
    assert f["devices"] == [f"expert-{f['served_by']}"]
    assert j["choices"][0]["message"]["content"] == out[f["served_by"]]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
def test_bad_input_gets_openai_errors(srv, route):
    def check(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> None:
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["message"]
        if param:
            assert e["param"] == param
        if code:
            assert e["code"] == code

    chat = route.endswith("chat/completions")
    ok = {"model": "base", **({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})}
    check(httpx.post(srv.url + route, content=b"{not json", headers={"content-type": "application/json"}), 400,
          code="invalid_json")
    check(httpx.post(srv.url + route, content=b"[1, 2]"), 400, code="invalid_json")
    check(post(srv, route, {**ok, "model": "cluster9"}), 404, "model", "model_not_found")
    check(post(srv, route, {**ok, "max_tokens": 65}), 400, "max_tokens", "max_tokens_exceeded")
    check(post(srv, route, {**ok, "max_tokens": -1}), 400, "max_tokens")
    check(post(srv, route, {**ok, "temperature": 0.7}), 400, "temperature")
    empty = {"messages": [{"role": "user", "content": "  "}]} if chat else {"prompt": ""}
    check(post(srv, route, {**ok, **empty}), 400, code="empty_prompt")
    check(post(srv, route, {**ok, **({"messages": "x"} if chat else {"prompt": 5})}), 400)
    check(post(srv, route, {**ok, ("messages" if chat else "prompt"): "x" * 9000 if not chat else
                            [{"role": "user", "content": "x" * 9000}]}), 413, code="request_too_large")
    check(httpx.get(srv.url + route), 405)
    assert post(srv, route, {**ok, "max_tokens": 2}).status_code == 200  # and it still serves


def test_concurrency_limit_is_429(srv):
    service = srv.service
    saved = service.inflight
    service.inflight = service.limits.max_concurrency
    try:
        r = post(srv, "/v1/completions", {"model": "base", "prompt": "hi"})
    finally:
        service.inflight = saved
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"


def test_client_disconnect_mid_stream_frees_the_devices(srv):
    body = {"model": "base", "prompt": "Once upon a time", "max_tokens": 64, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", srv.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 3:
                break  # leave mid-stream
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pings = [p for s in srv.service.schedulers.values() for p in s.path.ping()]
        if srv.service.inflight == 0 and all(p["serve_sessions"] == 0 and p["batch"] == 0 for p in pings):
            break
        time.sleep(0.2)
    assert srv.service.inflight == 0
    assert all(p["serve_sessions"] == 0 for p in pings), pings
    assert post(srv, "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 3}).status_code == 200


def test_openai_client(srv):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused-on-loopback")
    r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 5
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True) if c.choices]
    assert "".join(parts) == r.choices[0].message.content
    assert {m.id for m in client.models.list()} >= {"base", "auto"}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")


def test_split_path_reuses_prefixes_and_recovers_when_a_stage_lost_one(srv):
    from fedintel.inference.protocol import Client

    path, local = srv.service.schedulers["split"].path, srv.service.schedulers["local"].path
    first, second = path.workers
    stage2 = Client(second.address, srv.service.group.security, server_name=second.name)

    def hits(client):
        return client.request("ping").meta["prefix_hits"]

    system = srv.service.chat_ids([{"role": "user", "content": "x"}])[:-6]  # the chat template's system prompt
    prompts = [system + [100 + i, 200 + i, 300 + i] for i in range(3)]
    h1, h2 = hits(path.clients[0]), hits(stage2)
    assert path.prefill("pfx-0", prompts[0]).tokens == local.prefill("pfx-l0", prompts[0]).tokens
    assert path.prefill("pfx-1", prompts[1]).tokens == local.prefill("pfx-l1", prompts[1]).tokens
    assert (hits(path.clients[0]), hits(stage2)) == (h1 + 1, h2 + 1)  # both stages reused the system prompt
    stage2.request("serve_reset")  # the second stage loses every stored prompt (and session)
    assert path.prefill("pfx-2", prompts[2]).tokens == local.prefill("pfx-l2", prompts[2]).tokens  # redone in full
    assert (hits(path.clients[0]), hits(stage2)) == (h1 + 1, h2 + 1)
    # the full redo stored the prompt on both stages again: the next one reuses it on both
    assert path.prefill("pfx-3", system + [7, 8]).tokens == local.prefill("pfx-l3", system + [7, 8]).tokens
    assert (hits(path.clients[0]), hits(stage2)) == (h1 + 2, h2 + 2)
    path.reset()
    local.end(["pfx-l0", "pfx-l1", "pfx-l2", "pfx-l3"])
    stage2.close()
    # the path still serves requests end to end
    body = {"model": "base", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    assert post(srv, "/v1/chat/completions", body).status_code == 200


def test_split_path_prefills_a_group_in_one_pass_and_redoes_it_when_a_stage_lost_a_prefix(srv):
    from fedintel.inference.protocol import Client

    path, local = srv.service.schedulers["split"].path, srv.service.schedulers["local"].path
    second = path.workers[1]
    stage2 = Client(second.address, srv.service.group.security, server_name=second.name)

    def hits():
        return path.clients[0].request("ping").meta["prefix_hits"], stage2.request("ping").meta["prefix_hits"]

    system = srv.service.chat_ids([{"role": "user", "content": "x"}])[:-6]
    path.prefill("grp-seed", system + [5, 6])  # both stages store the system prompt
    prompts = [system + [100, 200], system + [101, 201, 301], [300, 301, 302, 303]]
    h = hits()
    got = path.prefill_many(["grp-0", "grp-1", "grp-2"], prompts).tokens
    assert hits() == (h[0] + 2, h[1] + 2)  # the two with the system prompt reused it on both stages
    assert got == [local.prefill(f"grp-l{i}", p).tokens[0] for i, p in enumerate(prompts)]
    feed = [7, 8, 9]
    assert path.decode(["grp-0", "grp-1", "grp-2"], feed).tokens == local.decode(
        ["grp-l0", "grp-l1", "grp-l2"], feed).tokens
    stage2.request("serve_reset")  # the second stage loses its stored prompts: the group is redone in full
    path.clients[0].request("serve_end", {"sessions": ["grp-seed", "grp-0", "grp-1", "grp-2"]})
    h = hits()
    more = [system + [9, 10], system + [11]]
    assert path.prefill_many(["grp-3", "grp-4"], more).tokens == [local.prefill(f"grp-l{i}", p).tokens[0]
                                                                  for i, p in ((3, more[0]), (4, more[1]))]
    assert hits() == h
    path.reset()
    local.end([f"grp-l{i}" for i in range(5)])
    stage2.close()
