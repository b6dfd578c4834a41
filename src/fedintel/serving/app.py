"""The OpenAI-compatible HTTP front (Starlette): chat and text completions, streaming, models, health, chat page.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true`` answers server-sent events
in OpenAI's chunk format, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, and the chat
page at ``/``. Every error is OpenAI's object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status (503 when no device path can serve). Decoding is greedy: ``temperature`` other than 0, ``top_p``
other than 1 and ``n`` other than 1 are refused, not ignored. Every response carries a ``fedintel`` field:
which model served (``served_by``; for ``auto`` the routing scores), the path and its devices, and where
the time went (queue, prefill, decode, each stage's compute, transport; seconds).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fedintel.serving.service import Service, ServiceError

PAGE = Path(__file__).with_name("static") / "chat.html"


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> JSONResponse:
    """An OpenAI-style error response."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _err(e: ServiceError) -> JSONResponse:
    return error(e.status, str(e), e.kind, e.code, e.param)


class Bad(ServiceError):
    """A 400 naming the request field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(status, message, "invalid_request_error", code, param)


def _greedy_only(body: dict[str, Any]) -> None:
    t = body.get("temperature")
    if t is not None and (not isinstance(t, int | float) or t != 0):
        raise Bad("this server decodes greedily: temperature must be 0 or absent", "temperature", "unsupported_value")
    p = body.get("top_p")
    if p is not None and p != 1:
        raise Bad("this server decodes greedily: top_p must be 1 or absent", "top_p", "unsupported_value")
    n = body.get("n")
    if n is not None and n != 1:
        raise Bad("this server returns one choice: n must be 1 or absent", "n", "unsupported_value")


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise Bad("stop must be a non-empty string or a list of up to 4 of them", "stop")
    return stop


class LoopMailbox:
    """Hands events from scheduler threads to the event loop with one wake-up per burst.

    A decode step emits one token per row; ``loop.call_soon_threadsafe`` per token would wake the loop (a
    write to its self-pipe, a GIL hand-off) 16 times per step at 16 rows. Here the first event of a burst
    schedules one flush and the rest of the step's events ride along with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        """Put ``item`` on ``queue`` from any thread (in order per queue)."""
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed (server shutting down): nobody is left to read the events
            pass

    def _flush(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Front:
    """The HTTP handlers over one :class:`Service`."""

    def __init__(self, service: Service, api_key: str | None) -> None:
        self.service = service
        self.api_key = api_key
        self.limits = service.limits
        self._mailboxes: dict[asyncio.AbstractEventLoop, LoopMailbox] = {}

    def _mailbox(self) -> LoopMailbox:
        """The mailbox of the running loop (one per loop: the app may be served by more than one)."""
        loop = asyncio.get_running_loop()
        box = self._mailboxes.get(loop)
        if box is None:
            box = self._mailboxes[loop] = LoopMailbox(loop)
        return box

    # ------------------------------------------------------------------ request checks
    def _auth(self, request: Request) -> JSONResponse | None:
        if not self.api_key:
            return None
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            return error(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'",
                         "invalid_request_error", "invalid_api_key")
        return None

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Bad(f"the request body has {declared} bytes, over this server's limit of {limit} "
                      "(limits.max_request_bytes)", code="request_too_large", status=413)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise Bad(f"the request body is over this server's limit of {limit} bytes "
                          "(limits.max_request_bytes)", code="request_too_large", status=413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise Bad(f"the request body is not valid JSON ({err})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise Bad("the request body must be a JSON object", code="invalid_json")
        return body

    def _max_tokens(self, body: dict[str, Any], prompt_len: int, model_id: str) -> int:
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        mt = body.get(key)
        if mt is None:
            mt = self.limits.default_max_tokens
        elif isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise Bad(f"{key} must be a positive integer", key)
        elif mt > self.limits.max_tokens:
            raise Bad(f"{key}={mt} is over this server's limit of {self.limits.max_tokens} (limits.max_tokens)",
                      key, "max_tokens_exceeded")
        ctx = self.service.max_context(model_id)
        if prompt_len + mt > ctx:
            raise Bad(f"This model's maximum context length is {ctx} tokens; the prompt has {prompt_len} tokens "
                      f"and {key}={mt}: shorten the prompt or lower {key}", "messages", "context_length_exceeded")
        return mt

    # ------------------------------------------------------------------ routes
    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        t_start = time.perf_counter()
        denied = self._auth(request)
        if denied is not None:
            return denied
        try:
            body = await self._body(request)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise Bad("model is required (see GET /v1/models; 'auto' routes to an expert)", "model")
            _greedy_only(body)
            stops = _stops(body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise Bad("stream must be true or false", "stream")
            if chat:
                text, ids = self._chat_prompt(body)
            else:
                text, ids = self._text_prompt(body)
            route = await asyncio.to_thread(self.service.route, model, text)
            max_tokens = self._max_tokens(body, len(ids), route.model_id)
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            mailbox = self._mailbox()

            def emit(kind: str, value: Any) -> None:
                mailbox.post(events, (kind, value))

            req = self.service.submit(route.model_id, ids, max_tokens, emit)
        except ServiceError as e:
            return _err(e)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        meta = {"id": rid, "created": int(time.time()), "model": route.model_id}

        def extension() -> dict[str, Any]:
            ext = {"served_by": route.model_id, "requested": route.requested, **req.usage.as_dict(),
                   "server_s": round(time.perf_counter() - t_start, 6)}
            if route.scores is not None:
                ext["route_scores"] = route.scores
            return ext

        def usage() -> dict[str, int]:
            n = len(req.generated)
            return {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}

        if stream:
            return StreamingResponse(self._stream(req, events, chat, meta, stops, extension, usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text_out, finish, failure = "", None, None
            async for kind, value in self._texts(req, events, stops):
                if kind == "text":
                    text_out += value
                elif kind == "done":
                    finish = value
                else:
                    failure = value
        except asyncio.CancelledError:
            req.cancel()
            raise
        if failure is not None:
            status, message = failure
            return error(status, message, "service_unavailable" if status == 503 else "invalid_request_error",
                         "device_failed" if status == 503 else None)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text_out}
            obj = "chat.completion"
        else:
            choice["text"] = text_out
            obj = "text_completion"
        return JSONResponse({**meta, "object": obj, "choices": [choice], "usage": usage(), "fedintel": extension()})

    def _chat_prompt(self, body: dict[str, Any]) -> tuple[str, list[int]]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise Bad("messages must be a non-empty list of {role, content}", "messages")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
                raise Bad(f"messages[{i}] needs a role of system, developer, user or assistant", f"messages[{i}].role")
            content = m.get("content")
            if isinstance(content, list):  # OpenAI's content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise Bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
                content = "".join(str(p.get("text", "")) for p in content)
            if not isinstance(content, str):
                raise Bad(f"messages[{i}].content must be a string", f"messages[{i}].content")
            clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
        if not any(m["content"].strip() for m in clean if m["role"] == "user"):
            raise Bad("the prompt is empty: give at least one user message with text", "messages", "empty_prompt")
        last_user = next(m["content"] for m in reversed(clean) if m["role"] == "user")
        return last_user, self.service.chat_ids(clean)

    def _text_prompt(self, body: dict[str, Any]) -> tuple[str, list[int]]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise Bad("prompt must be a string (one prompt per request)", "prompt")
        if not prompt.strip():
            raise Bad("the prompt is empty", "prompt", "empty_prompt")
        return prompt, self.service.prompt_ids(prompt)

    async def _texts(self, req: Any, events: asyncio.Queue, stops: list[str]) -> AsyncIterator[tuple[str, Any]]:
        """Text deltas as tokens arrive (whole characters only; cut at a stop string), then done/error."""
        sent = ""
        while True:
            kind, value = await events.get()
            if kind == "token":
                text = self.service.decode(req.generated)
                if stops:
                    cut = min((text.find(s) for s in stops if s in text), default=-1)
                    if cut >= 0:
                        if cut > len(sent):
                            yield "text", text[len(sent):cut]
                        req.cancel()
                        yield "done", "stop"
                        return
                    text = text[: max(len(sent), len(text) - max(len(s) for s in stops) + 1)]  # a stop's prefix waits
                if text.endswith("\ufffd") or len(text) <= len(sent):
                    continue  # an incomplete character (or a held-back possible stop prefix)
                yield "text", text[len(sent):]
                sent = text
            elif kind == "done":
                text = self.service.decode(req.generated)
                if len(text) > len(sent) and value != "cancelled":
                    yield "text", text[len(sent):]
                yield "done", value
                return
            else:
                yield "error", value
                return

    async def _stream(self, req: Any, events: asyncio.Queue, chat: bool, meta: dict[str, Any], stops: list[str],
                      extension: Any, usage: Any) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False, **extra: Any) -> bytes:
            if chat:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': obj, 'choices': [choice], **extra})}\n\n".encode()

        try:
            if chat:
                yield chunk(None, None, first=True)
            async for kind, value in self._texts(req, events, stops):
                if kind == "text":
                    yield chunk(value, None)
                elif kind == "done":
                    yield chunk(None, value, usage=usage(), fedintel=extension())
                    break
                else:
                    status, message = value
                    err = {"error": {"message": message, "type": "service_unavailable" if status == 503 else
                                     "invalid_request_error", "param": None,
                                     "code": "device_failed" if status == 503 else None}}
                    yield f"data: {json.dumps(err)}\n\n".encode()
                    break
            yield b"data: [DONE]\n\n"
        finally:
            req.cancel()  # a client that left mid-stream frees its row at the next step

    async def models(self, request: Request) -> Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        created = int(self.service.started)
        data = [{"id": m["id"], "object": "model", "created": created, "owned_by": "fedintel",
                 "fedintel": {k: v for k, v in m.items() if k != "id"}} for m in self.service.model_ids()]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        h = self.service.health()
        return JSONResponse(h, 200 if h["status"] != "down" else 503)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())


def build_app(service: Service, api_key: str | None = None) -> Starlette:
    """The Starlette application over ``service`` (``api_key``: required as a Bearer token when set)."""
    front = Front(service, api_key)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"no route {request.method} {request.url.path}", code="not_found")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    async def crashed(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    routes = [
        Route("/", front.page, methods=["GET"]),
        Route("/health", front.health, methods=["GET"]),
        Route("/v1/models", front.models, methods=["GET"]),
        Route("/v1/chat/completions", front.chat, methods=["POST"]),
        Route("/v1/completions", front.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, Exception: crashed})
    app.state.front = front
    return app
