"""The service behind the HTTP front: device paths, their schedulers, model selection and failover.

:class:`Service` starts every configured path (one :class:`~fedintel.inference.launcher.WorkerGroup`, one CA,
mutual TLS on every link), one :class:`~fedintel.serving.scheduler.Scheduler` per path, and maps model ids
to the paths that serve them: ``base`` (also the model's own name), each adapter (``global``, ``cluster0``
... of a run directory, merged into its own device process: an expert device), and ``auto`` (an adapter
picked per request by :mod:`fedintel.inference.experts` routing), and each cascade path (its own name).
The paths serving one model are its access paths (multi-access): requests go to the least loaded live one,
and when a path dies its requests continue on another path of the same model (a single, split or
speculative path: they all give the model's greedy tokens), or get 503. A monitor restarts dead paths
(``restart_dead``) while the others keep serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedintel.inference.packing import packing_available
from fedintel.inference.protocol import LinkSecurity, is_loopback
from fedintel.serving.backends import (
    DeviceOptions,
    DevicePath,
    DraftSpec,
    PairPath,
    PathDown,
    PathSpec,
    new_group,
    start_path,
)
from fedintel.serving.config import ServeConfig, ServeConfigError, ServePathConfig
from fedintel.serving.scheduler import Emit, GenRequest, Scheduler
from fedintel.serving.vertical import CascadeScheduler, SpeculativeScheduler

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A request the service cannot take: ``status`` (HTTP), ``kind`` and ``code`` as OpenAI names them."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param


@dataclass
class Route:
    """Which model serves a request and how it was chosen."""

    model_id: str
    requested: str
    scores: dict[str, float] | None = None


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    from fedintel.models.loader import ModelError, resolve_model_dir, tiny_llama_tokenizer

    if name == "tiny-llama":
        return tiny_llama_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(resolve_model_dir(name))
    except (ModelError, OSError, ValueError):
        return AutoTokenizer.from_pretrained(name)


def discover_adapters(cfg: ServeConfig) -> dict[str, Path]:
    """Adapter name -> PEFT directory: ``adapters`` plus every adapter of ``from_run``."""
    out: dict[str, Path] = {}
    if cfg.from_run:
        root = Path(cfg.from_run) / "adapters"
        if not root.is_dir():
            raise ServeConfigError(f"from_run: {cfg.from_run} has no adapters/ directory (a finished run with "
                                   "output.save_adapter: true)")
        for d in sorted(root.iterdir()):
            if (d / "adapter_config.json").is_file():
                out[d.name] = d
        if not out:
            raise ServeConfigError(f"from_run: {root} holds no PEFT adapter (adapter_config.json)")
    for name, d in cfg.adapters.items():
        if not (Path(d) / "adapter_config.json").is_file():
            raise ServeConfigError(f"adapters.{name}: {d} is not a PEFT adapter directory (no adapter_config.json)")
        out[name] = Path(d)
    return out


def path_spec(p: ServePathConfig, adapters: dict[str, Path], model: str, total_layers: int) -> PathSpec:
    """The :class:`PathSpec` of one configured path (``adapters``: the known ones; ``model``: the served
    model's name, of ``total_layers`` layers), refusing what cannot run with a message naming the field."""
    from fedintel.inference.worker import _total_layers
    from fedintel.models.loader import ModelError

    if p.model != "base" and p.model not in adapters:
        raise ServeConfigError(f"paths.{p.name}.model: {p.model!r} is neither base nor an adapter "
                               f"({sorted(adapters) or 'none configured'})")
    kind = p.path_kind
    model_id = p.name if kind == "cascade" else p.model
    if kind == "cascade" and p.name in adapters:
        raise ServeConfigError(f"paths.{p.name}: a cascade serves the model id of its name, and {p.name!r} is an "
                               "adapter: rename the path")
    spec = PathSpec(p.name, model_id, adapters.get(p.model), list(p.cuts), kind)
    if p.draft is not None:
        name = p.draft.model or model
        try:
            layers = _total_layers(name, p.draft.num_layers)
        except (ModelError, OSError, ValueError) as err:
            raise ServeConfigError(f"paths.{p.name}.draft.model: {err}") from None
        if name == model and layers >= total_layers:
            raise ServeConfigError(f"paths.{p.name}.draft.num_layers: a draft of {layers} layers is not an early exit "
                                   f"of the served model's {total_layers}")
        spec.draft = DraftSpec(name, layers, p.draft.num_layers)
        spec.k = p.k or spec.k
        spec.threshold = spec.threshold if p.threshold is None else p.threshold
        spec.confidence = p.confidence or spec.confidence
    return spec


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond loopback without an API key."""
    if not is_loopback(host) and not api_key:
        raise ServeConfigError(f"host {host!r} is not loopback: set an API key (--api-key or the environment "
                               "variable named by api_key_env) before serving on a network")


class Service:
    """Paths, schedulers and routing for one ``fedintel serve``; close it to stop every device process."""

    def __init__(self, cfg: ServeConfig) -> None:
        from fedintel.inference.worker import _total_layers
        from fedintel.runtime import resolve_runtime

        self.cfg = cfg
        self.limits = cfg.limits
        runtime = resolve_runtime(cfg.runtime, apply_threads=False)  # refuse a device this machine lacks
        self.device, self.dtype = str(runtime.device), cfg.runtime.dtype
        if cfg.pack_weights == "on":
            why = packing_available(runtime.device, runtime.dtype)
            if why:
                raise ServeConfigError(f"pack_weights: on cannot be served: {why} (use auto or off)")
        self.device_options = DeviceOptions(self.device, self.dtype, max_sessions=max(64, 2 * cfg.limits.max_batch),
                                            prefix_cache=cfg.limits.prefix_cache, pack_weights=cfg.pack_weights,
                                            batch_hint=cfg.limits.max_batch)
        self.adapters = discover_adapters(cfg)
        self.model_name = cfg.model.name
        self.total_layers = _total_layers(cfg.model.name, cfg.model.num_layers)
        specs = [path_spec(p, self.adapters, self.model_name, self.total_layers) for p in cfg.paths]
        self.cascades = [s.model_id for s in specs if s.kind == "cascade"]
        served = {s.model_id for s in specs}
        for name, d in self.adapters.items():
            if name not in served:
                kind = "split" if cfg.adapter_cuts else "single"
                specs.append(PathSpec(f"expert-{name}", name, d, list(cfg.adapter_cuts), kind))
        self.tokenizer = _tokenizer(cfg.model.name)
        eos = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            eos.add(im_end)
        self.eos_ids = frozenset(i for i in eos if i is not None)
        security = None
        if cfg.insecure:
            security = LinkSecurity.plaintext()
        elif cfg.tls_dir:
            security = LinkSecurity.tls(cfg.tls_dir, "front")
        self.group = new_group(security, threads=cfg.runtime.threads or 1, start_timeout=cfg.start_timeout_s)
        self.lock = threading.Lock()
        self.schedulers: dict[str, Scheduler] = {}
        self.specs = {s.name: s for s in specs}
        self.inflight = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._restarting: set[str] = set()
        self._restarts: list[threading.Thread] = []
        try:
            self.router = self._router()  # a routing that cannot serve is refused before any process starts
            self._start_paths(specs)
        except BaseException:
            self.close()
            raise
        self._monitor = threading.Thread(target=self._watch, name="serve-monitor", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------------ paths
    def _start_path(self, spec: PathSpec) -> DevicePath | PairPath:
        return start_path(self.group, spec, self.model_name, self.total_layers, self.cfg.model.num_layers,
                          self.device_options, timeout=self.cfg.timeout_s)

    def _start_paths(self, specs: list[PathSpec]) -> None:
        # start every process at once (they load in parallel), then connect each path
        from fedintel.serving.backends import connect_path, stage_specs

        all_specs, owners = [], []
        for spec in specs:
            st = stage_specs(spec, self.model_name, self.total_layers, self.cfg.model.num_layers,
                             self.device_options)
            all_specs += st
            owners += [spec.name] * len(st)
        workers = self.group.start(all_specs)
        for spec in specs:
            path = connect_path(spec, self.group, [w for w, o in zip(workers, owners, strict=True) if o == spec.name],
                                self.cfg.timeout_s)
            if isinstance(path, PairPath) and path.small.vocab_size != path.large.vocab_size:
                raise ServeConfigError(f"paths.{spec.name}.draft: its vocabulary ({path.small.vocab_size} tokens) is "
                                       f"not the served model's ({path.large.vocab_size}): a draft must share the "
                                       "tokenizer")
            self.schedulers[spec.name] = self._scheduler(path)

    def _scheduler(self, path: DevicePath | PairPath) -> Scheduler:
        """Continuous batching on single and split paths; one request at a time on a pair."""
        if isinstance(path, DevicePath):
            return Scheduler(path, self.limits.max_batch, self._failed, self.limits.batch_prefill)
        kind = SpeculativeScheduler if path.spec.kind == "speculative" else CascadeScheduler
        return kind(path, self._failed, self.tokenizer.eos_token_id)

    def _router(self) -> Any:
        """The router of ``model: auto`` (an :class:`EmbeddingRouter`, or ``"loss"``); sets ``routing_method``."""
        self.routing_method = None
        if not self.adapters:
            return None
        routing = self.cfg.routing
        if routing.examples:
            from fedintel.inference.embedding import Encoder
            from fedintel.inference.experts import EmbeddingRouter

            unknown = sorted(set(routing.examples) - set(self.adapters))
            if unknown:
                raise ServeConfigError(f"routing.examples: {unknown} are not adapters ({sorted(self.adapters)})")
            self.routing_method = "examples"
            return EmbeddingRouter(Encoder(routing.encoder), routing.examples)
        if routing.method in ("clients", "auto") and self.cfg.from_run:
            router = self._clients_router()
            if router is not None:
                return router
        self.routing_method = "loss"
        return "loss"

    def _clients_router(self) -> Any:
        """Route by the centroids of from_run's clients (None where auto cannot: the run has no experts)."""
        from fedintel.inference.embedding import Encoder
        from fedintel.inference.experts import EmbeddingRouter
        from fedintel.inference.run_experts import RunExpertsError, expert_statistics, open_expert_run

        assert self.cfg.from_run is not None
        try:
            run = open_expert_run(self.cfg.from_run)
        except RunExpertsError as err:
            if self.cfg.routing.method == "clients":
                raise ServeConfigError(f"routing.method: clients cannot route {self.cfg.from_run}: {err}") from None
            log.info("auto routing by loss: %s", err)
            return None
        encoder = Encoder(self.cfg.routing.encoder)
        self.routing_method = "clients"
        return EmbeddingRouter.from_statistics(encoder, expert_statistics(run, encoder))

    # ------------------------------------------------------------------ models
    def model_ids(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries: base, each adapter, each cascade, and auto (with the paths serving each)."""
        out = [{"id": "base", "aliases": [self.model_name], "kind": "base", "paths": self._paths_of("base")}]
        for name in self.adapters:
            out.append({"id": name, "kind": "adapter", "adapter": str(self.adapters[name]),
                        "paths": self._paths_of(name)})
        large = {p.name: p.model for p in self.cfg.paths}
        for name in self.cascades:
            spec, small = self.specs[name], self.specs[name].draft
            out.append({"id": name, "kind": "cascade", "small": small.model if small else None,
                        "small_layers": small.layers if small else None, "large": large[name],
                        "threshold": spec.threshold, "confidence": spec.confidence, "paths": [name]})
        if self.adapters:
            out.append({"id": "auto", "kind": "router",
                        "routing": self.routing_method,
                        "routes_to": self.router.names if self.router not in (None, "loss") else list(self.adapters),
                        "paths": []})
        return out

    def _paths_of(self, model_id: str) -> list[str]:
        return [n for n, s in self.specs.items() if s.model_id == model_id]

    def route(self, requested: str, text: str) -> Route:
        """Resolve a request's ``model`` (``auto`` routes ``text`` to an adapter)."""
        if requested in ("base", self.model_name):
            return Route("base", requested)
        if requested in self.adapters or requested in self.cascades:
            return Route(requested, requested)
        if requested == "auto" and self.router is not None:
            if self.router == "loss":
                scores = self._loss_scores(list(self.adapters), text)
                best = min(scores, key=lambda k: scores[k])
            else:
                sims = self.router.scores([text])[0]
                scores = {n: float(sims[self.router.names.index(n)]) for n in self.router.names}
                best = max(scores, key=lambda k: scores[k])
            return Route(best, requested, {k: round(v, 4) for k, v in scores.items()})
        known = ", ".join(m["id"] for m in self.model_ids())
        raise ServiceError(404, f"The model {requested!r} does not exist; this server serves: {known}",
                           code="model_not_found", param="model")

    def _loss_scores(self, names: list[str], text: str) -> dict[str, float]:
        out = {}
        for name in names:
            for sched in self._live(name):
                c = sched.path.clients[0]
                try:
                    reply = c.request("score", {"texts": [text]}, timeout=self.cfg.timeout_s)
                    out[name] = float(reply.tensors["loss"][0])
                    break
                except Exception as err:  # a dead or split expert cannot score: try the next path
                    log.info("scoring on %s: %s", sched.path.name, err)
        if not out:
            raise ServiceError(503, "no expert could score the prompt for auto routing", "service_unavailable",
                               "no_healthy_path")
        return {k: (v if v == v else float("inf")) for k, v in out.items()}

    def _live(self, model_id: str) -> list[Scheduler]:
        with self.lock:
            return sorted((s for s in self.schedulers.values() if s.path.spec.model_id == model_id and s.up),
                          key=lambda s: s.load)

    def max_context(self, model_id: str) -> int:
        """The context (tokens) of the paths serving ``model_id`` (the smallest)."""
        scheds = [s for s in self.schedulers.values() if s.path.spec.model_id == model_id]
        return min((s.path.max_context for s in scheds), default=1 << 30)

    # ------------------------------------------------------------------ requests
    def submit(self, model_id: str, prompt_ids: list[int], max_tokens: int, emit: Emit) -> GenRequest:
        """Queue a generation on the least loaded live path of ``model_id``."""
        with self.lock:
            if self.inflight >= self.limits.max_concurrency:
                raise ServiceError(429, f"{self.inflight} requests are in flight, the limit of this server "
                                   "(limits.max_concurrency); retry shortly", "rate_limit_error", "rate_limit_exceeded")
            self.inflight += 1

        def done_emit(kind: str, value: Any) -> None:
            if kind != "token":
                with self.lock:
                    self.inflight -= 1
            emit(kind, value)

        req = GenRequest(list(prompt_ids), max_tokens, self.eos_ids, done_emit, model_id)
        if not self._place(req):
            with self.lock:
                self.inflight -= 1
            raise ServiceError(503, f"no live device path serves {model_id!r} right now; retry shortly",
                               "service_unavailable", "no_healthy_path")
        return req

    def _place(self, req: GenRequest) -> bool:
        for sched in self._live(req.model_id):
            try:
                sched.submit(req)
                return True
            except PathDown:
                continue
        return False

    def _failed(self, sched: Scheduler, reqs: list[GenRequest], reason: str) -> None:
        """A path died: its requests continue elsewhere (from the tokens they have) or get 503."""
        for r in reqs:
            if r.cancelled.is_set():
                r._finish("done", "cancelled")
                continue
            r.usage.failovers += 1
            if r.usage.failovers > 3 or not self._place(r):
                r._finish("error", (503, f"device path {sched.path.name} failed ({reason}) and no other live path "
                                         f"serves {r.model_id!r}"))

    def _watch(self) -> None:
        """Mark paths with a dead process down; restart them (``restart_dead``)."""
        while not self._stop.wait(0.25):
            with self.lock:
                scheds = list(self.schedulers.items())
            for name, s in scheds:
                if s.down is None and not s.path.alive():
                    dead = [w.name for w in s.path.workers if not w.alive()]
                    s.mark_down(f"device process {', '.join(dead)} died")
                if s.down is not None and self.cfg.restart_dead and name not in self._restarting:
                    self._restarting.add(name)
                    t = threading.Thread(target=self._restart, args=(name,), daemon=True)
                    self._restarts.append(t)
                    t.start()

    def _restart(self, name: str) -> None:
        old = self.schedulers[name]
        try:
            old.thread.join(timeout=30)
            for w in old.path.workers:
                self.group.kill(w)
            old.path.close()
            if self._stop.is_set():
                return
            path = self._start_path(self.specs[name])
            with self.lock:
                if self._stop.is_set():  # closed while this path was starting: it must not outlive the service
                    for w in path.workers:
                        self.group.kill(w)
                    path.close()
                    return
                self.schedulers[name] = self._scheduler(path)
            log.warning("path %s restarted", name)
        except Exception as err:
            log.warning("restarting path %s failed: %s", name, err)
            time.sleep(5)
        finally:
            self._restarting.discard(name)

    # ------------------------------------------------------------------ text
    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, with the tokenizer's chat template (a plain transcript without one)."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            if isinstance(ids, torch.Tensor):
                ids = ids.tolist()
            return [int(i) for i in ids]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.prompt_ids(text)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a plain completion prompt."""
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        """Text of generated tokens (special tokens dropped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ status
    def health(self) -> dict[str, Any]:
        """Liveness of every path and device (``ok`` when every model has a live path)."""
        paths = {}
        with self.lock:
            scheds = dict(self.schedulers)
        for name, s in scheds.items():
            paths[name] = {"model": s.path.spec.model_id, "kind": s.path.spec.kind, "up": s.up, "down_reason": s.down,
                           "devices": [{"name": w.name, "pid": w.pid, "alive": w.alive()} for w in s.path.workers],
                           "load": s.load, "restarting": name in self._restarting,
                           "decode_steps": s.steps, "decoded_rows": s.rows_decoded, "decode_s": round(s.decode_s, 3),
                           "prefills": s.prefills, "prefill_s": round(s.prefill_s, 3)}
        models = {m["id"]: any(paths[p]["up"] for p in m["paths"]) for m in self.model_ids() if m["paths"]}
        status = "ok" if all(models.values()) else ("degraded" if any(models.values()) else "down")
        return {"status": status, "models": models, "paths": paths, "inflight": self.inflight,
                "uptime_s": round(time.time() - self.started, 1), "device": self.device, "dtype": self.dtype,
                "links": "plaintext" if self.group.security.insecure else "mutual TLS"}

    def close(self) -> None:
        """Stop the schedulers and every device process (restarts in progress included)."""
        self._stop.set()
        for t in self._restarts:  # a restart may be starting processes right now
            t.join(timeout=120)
        with self.lock:
            scheds = list(self.schedulers.values())
        for s in scheds:
            s.close()
            s.path.close()
        self.group.close()


def api_key_from(cfg: ServeConfig, given: str | None) -> str | None:
    """The API key: ``--api-key`` if given, else the environment variable ``api_key_env``."""
    return given or os.environ.get(cfg.api_key_env) or None
