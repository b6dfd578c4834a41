"""Trust and failure: the API key, the context limit, and device processes killed under load (tiny-llama on
two one-process paths that both serve the base model)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fedintel.serving.config import ServeConfig
from fedintel.serving.server import serve_in_thread
from fedintel.serving.service import ServeConfigError, check_bind
from tests.serving.conftest import run_direct

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def srv():
    cfg = ServeConfig.model_validate({
        "model": {"name": "tiny-llama"},
        "paths": [{"name": "a"}, {"name": "b"}],
        "limits": {"max_tokens": 128, "max_batch": 8},
        "restart_dead": True,
    })
    running = serve_in_thread(cfg, api_key=KEY)
    try:
        yield running
    finally:
        running.stop()


def test_api_key(srv):
    body = {"model": "base", "prompt": "hello", "max_tokens": 2}
    r = httpx.post(srv.url + "/v1/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(srv.url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(srv.url + "/v1/models").status_code == 401
    assert httpx.post(srv.url + "/v1/completions", json=body, headers=AUTH, timeout=60).status_code == 200
    with pytest.raises(ServeConfigError, match="API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", KEY)
    check_bind("127.0.0.1", None)


def test_prompt_over_context(srv):
    r = httpx.post(srv.url + "/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "base", "prompt": "word " * 600, "max_tokens": 16})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded" and "512" in r.json()["error"]["message"]


async def _stream(c: httpx.AsyncClient, url: str, prompt: str, started: asyncio.Event) -> dict:
    body = {"model": "base", "prompt": prompt, "max_tokens": 48, "stream": True}
    text, last, error = "", None, None
    async with c.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            j = json.loads(line[5:])
            if "error" in j:
                error = j["error"]
                continue
            text += j["choices"][0]["text"]
            started.set()
            if j["choices"][0]["finish_reason"]:
                last = j
    return {"text": text, "last": last, "error": error}


def _wait_ok(srv, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        h = httpx.get(srv.url + "/health").json()
        if h["status"] == "ok" and all(p["up"] for p in h["paths"].values()):
            return h
        time.sleep(0.5)
    raise AssertionError(f"the service did not recover: {h}")


def test_device_killed_under_load_fails_over(srv):
    prompts = [f"Request number {i} asks about topic {i * 7}" for i in range(8)]

    async def load() -> list[dict]:
        started = asyncio.Event()
        async with httpx.AsyncClient(timeout=600) as c:  # generous: the suite shares 2 cores
            tasks = [asyncio.create_task(_stream(c, srv.url, p, started)) for p in prompts]
            await started.wait()
            victim = srv.service.schedulers["a"].path.workers[0]
            srv.service.group.kill(victim)  # SIGKILL, as a crash
            return await asyncio.gather(*tasks)

    results = asyncio.run(load())
    answered = [r for r in results if r["last"] is not None]
    assert len(answered) + sum(r["error"] is not None for r in results) == len(prompts)
    for r in results:  # a failed request says so in OpenAI's form (503), never hangs
        if r["error"] is not None:
            assert r["error"]["code"] == "device_failed"
    assert any(r["last"]["fedintel"]["failovers"] >= 1 for r in answered), "nothing was in flight on path a"
    assert len(answered) == len(prompts)  # path b took over every request of path a
    # the server keeps serving while path a restarts, and path a comes back
    r = httpx.post(srv.url + "/v1/completions", json={"model": "base", "prompt": "still there?", "max_tokens": 4},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200
    h = _wait_ok(srv)
    assert all(d["alive"] for p in h["paths"].values() for d in p["devices"])
    for s in srv.service.schedulers.values():
        assert all(p["serve_sessions"] == 0 for p in s.path.ping())


@pytest.mark.parametrize("grouped", [False, True], ids=["one-at-a-time", "group-prefill"])
def test_device_killed_while_admitting_loses_nothing(srv, monkeypatch, grouped):
    """Deterministic: path a's device dies right after the first prefill of a turn: one at a time, the first
    of several queued requests; with group prefill, the whole group in one pass. Every request must continue
    on path b (from the token it already has) with the tokens it gets alone there."""
    _wait_ok(srv)  # the first case's path a has restarted
    service = srv.service
    if grouped:
        service.cfg.restart_dead = False  # for the rest of the module (the next test kills everything anyway)
    a, b = service.schedulers["a"], service.schedulers["b"]
    a.batch_prefill = grouped
    prompts = [service.prompt_ids(f"Question {i}: what comes after {i}?") for i in range(4)]
    name = "prefill_many" if grouped else "prefill"
    real = getattr(a.path, name)
    calls = []

    def prefill_then_crash(*args):
        out = real(*args)
        calls.append(args[0])
        if len(calls) == 1:  # the device dies right after the turn's first prefill
            service.group.kill(a.path.workers[0])
        return out

    monkeypatch.setattr(a.path, name, prefill_then_crash)
    reqs, emits = run_direct(a, prompts, 10, service.eos_ids)
    assert len(calls) == 1 and a.down is not None
    if grouped:
        assert len(calls[0]) == len(prompts)  # all four were prefilled in the one pass before the device died
    for r, e in zip(reqs, emits, strict=True):
        assert e[-1][0] == "done", e[-1]
        assert r.usage.failovers == 1 and r.usage.path == "b"
    alone = [run_direct(b, [p], 10, service.eos_ids)[0][0].generated for p in prompts]
    assert [r.generated for r in reqs] == alone


def test_no_live_path_is_503(srv):
    srv.service.cfg.restart_dead = False
    for s in list(srv.service.schedulers.values()):
        for w in s.path.workers:
            srv.service.group.kill(w)
    deadline = time.monotonic() + 10
    while httpx.get(srv.url + "/health").json()["status"] != "down" and time.monotonic() < deadline:
        time.sleep(0.1)
    h = httpx.get(srv.url + "/health")
    assert h.status_code == 503 and h.json()["status"] == "down"
    r = httpx.post(srv.url + "/v1/completions", json={"model": "base", "prompt": "anyone?", "max_tokens": 4},
                   headers=AUTH, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_path"
