"""One device: a process that serves a model (or a slice of one) over mutual-TLS links.

Run it by hand on any machine, with a certificate issued for it by the run's CA (``fedintel infer certs
--out DIR --device stage0 --host 10.0.0.5``; copy ``ca.crt``, ``stage0.crt`` and ``stage0.key``)::

    python -m fedintel.inference.worker --model smollm2-135m --layers 0:15 \\
        --certs DIR --name stage0 --host 0.0.0.0 --port 7001

or let :func:`fedintel.inference.launcher.launch` start it on this machine. When ready it prints one JSON
line ``{"ready": true, "address": "host:port", "pid": ...}`` on stdout. It exits on a ``shutdown``
request, on SIGTERM/SIGINT, and within half a second of its parent dying when ``--parent-pid`` is set.

Operations (``op`` of a request):

``ping``       who am I: role, model, layer slice, counters
``echo``       the request's tensors back (transport benchmarks)
``configure``  ``{"next": "host:port" | null}``: the next stage of a split pipeline
``forward``    ``{"session", "pos", "n_logits", "want_logits"}`` + ``input_ids`` or ``hidden``: run the
               slice with the session's KV cache; non-last stages pass the activation to the next stage
``truncate``   ``{"session", "length"}`` drop cached positions (speculative decoding), down the chain
``end``        ``{"session"}`` free a session, down the chain
``generate``   ``{"input_ids" | "prompt", "max_new_tokens"}`` greedy answer of a whole model, with confidence
``score``      ``{"texts"}`` mean token loss of each text under this model (expert routing by loss)
``classify``   ``{"texts"}`` class probabilities from the device's own classifier (federated analytics)
``shutdown``   reply, then exit
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from fedintel.inference.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Client,
    FrameServer,
    LinkSecurity,
    Message,
    ProtocolError,
    RemoteError,
)

log = logging.getLogger("fedintel.inference.worker")


class WorkerError(RuntimeError):
    """A request this worker cannot serve (the message says why)."""


class Session:
    """One KV cache and when it was last used."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.last_used = time.monotonic()


class Worker:
    """The request handler of one device. ``runtime`` places the model it loads: from ``--device`` and
    ``--dtype`` unless a subclass (``fedintel.serving.device``) set one before loading."""

    runtime: Any = None

    def __init__(self, args: argparse.Namespace, security: LinkSecurity) -> None:
        self.args = args
        self.security = security
        self.role = args.role
        self.forwards = 0
        self.requests = 0
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.next: Client | None = None
        self.next_address: str | None = None
        self.lock = threading.Lock()
        self.server: FrameServer | None = None
        self.delay_s = float(args.delay)
        self.stage: Any = None
        self.tokenizer: Any = None
        # The model computes on this one thread, which also packs the weights: oneDNN-packed linears called from
        # a thread other than the one that packed them ran 1.2-1.4x slower here, and the link server answers
        # each connection on a thread of its own.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-compute")
        self._compute_thread = self._compute.submit(threading.current_thread).result()
        self.packed_linears = 0
        if self.role == "lm":
            self._load_lm()
            self.packed_linears = self.on_compute(self._pack, args.pack_weights, args.batch_hint)
        else:
            self._load_classifier()

    def on_compute(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the compute thread (at once when already on it)."""
        if threading.current_thread() is self._compute_thread:
            return fn(*args)
        return self._compute.submit(fn, *args).result()

    def _pack(self, mode: str, batch_hint: int) -> int:
        """Prepack the stage's linears for oneDNN (``mode`` auto/on/off); how many were packed."""
        from fedintel.inference.packing import pack_linears, packing_available

        why = packing_available(self.runtime.device, self.runtime.dtype)
        if mode == "off" or (mode == "auto" and why):
            return 0
        if why:
            raise WorkerError(f"--pack-weights on: {why}")
        return pack_linears(self.stage, max(1, batch_hint))

    # ------------------------------------------------------------------ loading
    def _load_lm(self) -> None:
        from fedintel.config import ModelConfig, RuntimeConfig
        from fedintel.inference.stage import StageModel, num_layers_of
        from fedintel.models.loader import load_base_model
        from fedintel.runtime import resolve_runtime

        a = self.args
        total = _total_layers(a.model, a.num_layers)
        start, end = _parse_slice(a.layers) if a.layers else (0, total)
        if not 0 <= start < end <= total:
            raise WorkerError(f"--layers {a.layers}: not a non-empty slice of the model's {total} layers")
        load_layers = a.num_layers
        if not a.adapter and a.model != "tiny-llama":
            load_layers = end  # layers after this stage are never loaded
        if self.runtime is None:  # a subclass may have placed itself already
            self.runtime = resolve_runtime(RuntimeConfig(device=a.device, dtype=a.dtype), apply_threads=False)
        lm = load_base_model(ModelConfig(name=a.model, num_layers=load_layers), self.runtime)
        model = lm.model
        if a.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
        if num_layers_of(model) > end:  # built-in random models ignore num_layers: cut here
            model.model.layers = model.model.layers[:end]
            model.config.num_hidden_layers = end
        stage = StageModel(model, start, end)
        stage.to(self.runtime.device)
        if end < total:  # a truncated load: this stage is not the last of the full model
            stage.last, stage.norm, stage.lm_head = False, None, None
        self.stage = stage
        self.total_layers = total
        self.tokenizer = lm.tokenizer
        self.model_name = a.model

    def _load_classifier(self) -> None:
        from fedintel.inference.embedding import Encoder, LinearHead, load_labelled

        a = self.args
        if not a.train_data:
            raise WorkerError("--role classifier needs --train-data (the device's own labelled data, JSONL)")
        texts, labels = load_labelled(a.train_data)
        self.encoder = Encoder(a.model if a.model != "smollm2-135m" else "minilm-l6")
        self.head = LinearHead.fit(self.encoder.embed(texts), labels, a.num_labels, seed=a.seed)
        self.model_name = self.encoder.name
        self.local_samples = len(texts)

    # ------------------------------------------------------------------ dispatch
    def handle(self, msg: Message) -> Message:
        self.requests += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        fn = getattr(self, f"op_{msg.op}", None)
        if fn is None:
            raise WorkerError(f"unknown operation {msg.op!r}")
        return fn(msg)

    def op_ping(self, msg: Message) -> Message:
        info: dict[str, Any] = {"role": self.role, "name": self.security.name, "model": self.model_name, "pid": os.getpid(),
                                "forwards": self.forwards, "requests": self.requests, "sessions": len(self.sessions),
                                "packed_linears": self.packed_linears}
        if self.role == "lm":
            info.update(start=self.stage.start, end=self.stage.end, total=self.total_layers,
                        first=self.stage.first, last=self.stage.last, hidden=self.stage.hidden_size,
                        vocab=self.stage.vocab_size, max_context=self.stage.max_context, next=self.next_address)
        return Message("ok", info)

    def op_echo(self, msg: Message) -> Message:
        """Return the tensors as received (transport benchmarks)."""
        return Message("ok", {}, msg.tensors)

    def op_configure(self, msg: Message) -> Message:
        nxt, nxt_name = msg.meta.get("next"), msg.meta.get("next_name")
        with self.lock:
            if self.next is not None:
                self.next.close()
            self.next, self.next_address = None, None
            if nxt:
                self.next = Client(str(nxt), self.security, timeout=self.args.timeout,
                                   max_frame_bytes=self.args.max_frame_bytes,
                                   server_name=str(nxt_name) if nxt_name and not self.security.insecure else None)
                self.next_address = str(nxt)
        return Message("ok", {"next": self.next_address})

    def _session(self, sid: str, create: bool) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            if not create:
                raise WorkerError(f"unknown session {sid!r} (expired or never started)")
            while len(self.sessions) >= self.args.max_sessions:
                self.sessions.popitem(last=False)
            s = self.sessions[sid] = Session(self.stage.new_cache())
        self.sessions.move_to_end(sid)
        s.last_used = time.monotonic()
        return s

    def _forward_next(self, op: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Message:
        if self.next is None:
            raise WorkerError(
                f"stage {self.stage.start}:{self.stage.end} is not the last stage and has no next stage configured"
            )
        try:
            return self.next.request(op, meta, tensors)
        except RemoteError as err:
            raise WorkerError(str(err)) from None
        except ProtocolError as err:
            raise WorkerError(f"next stage at {self.next_address} failed: {err}") from None

    def op_forward(self, msg: Message) -> Message:
        if self.role != "lm":
            raise WorkerError("this device serves a classifier, not a language model")
        m = msg.meta
        sid, pos = str(m.get("session", "")), int(m.get("pos", -1))
        x = msg.tensors.get("input_ids" if self.stage.first else "hidden")
        if x is None:
            raise WorkerError(f"forward to stage {self.stage.start}:{self.stage.end} needs tensor "
                              f"{'input_ids' if self.stage.first else 'hidden'}")
        with self.lock:
            s = self._session(sid, create=pos == 0)
            have = s.cache.get_seq_length()
            if have != pos:
                raise WorkerError(f"session {sid} out of sync on stage {self.stage.start}:{self.stage.end}: "
                                  f"{have} cached tokens, request starts at position {pos}")
            t0 = time.perf_counter()
            try:
                out = self.on_compute(self.stage, x, s.cache, int(m.get("n_logits", 1)))
            except Exception:
                from fedintel.inference.stage import crop_cache

                if s.cache.get_seq_length() > pos:  # never leave a half-updated cache behind
                    crop_cache(s.cache, pos)
                raise
            tensors = {"hidden": out}
            if self.stage.last:
                tensors = {"argmax": out[0].argmax(-1)}
                if m.get("want_logits"):
                    tensors["logits"] = out[0]
            compute_s = time.perf_counter() - t0
            self.forwards += 1
        timing = list(m.get("timing", [])) + [compute_s]
        if not self.stage.last:
            try:
                return self._forward_next("forward", {**m, "timing": timing}, tensors)
            except WorkerError:
                from fedintel.inference.stage import crop_cache

                with self.lock:  # roll back so every stage still agrees on the session's length
                    if s.cache.get_seq_length() > pos:
                        crop_cache(s.cache, pos)
                raise
        return Message("ok", {"timing": timing}, tensors)

    def op_truncate(self, msg: Message) -> Message:
        from fedintel.inference.stage import crop_cache

        sid, length = str(msg.meta.get("session")), int(msg.meta.get("length", -1))
        with self.lock:
            crop_cache(self._session(sid, create=False).cache, length)
        if not self.stage.last:
            return self._forward_next("truncate", msg.meta, {})
        return Message("ok")

    def op_end(self, msg: Message) -> Message:
        with self.lock:
            self.sessions.pop(str(msg.meta.get("session")), None)
        if not self.stage.last and self.next is not None:
            try:
                self.next.request("end", msg.meta)
            except (ProtocolError, RemoteError):
                pass
        return Message("ok")

    def _whole(self) -> Any:
        if self.role != "lm" or not (self.stage.first and self.stage.last):
            raise WorkerError("this operation needs a device holding the whole model (not a split stage)")
        return self.stage

    def op_generate(self, msg: Message) -> Message:
        stage = self._whole()
        m = msg.meta
        ids = msg.tensors.get("input_ids")
        if ids is None:
            prompt = m.get("prompt")
            if not isinstance(prompt, str):
                raise WorkerError("generate needs input_ids or a text prompt")
            ids = torch.tensor([self.tokenizer(prompt)["input_ids"]])
        max_new = int(m.get("max_new_tokens", 32))
        if ids.shape[1] + max_new > stage.max_context:
            raise WorkerError(f"the prompt has {ids.shape[1]} tokens; with max_new_tokens={max_new} it exceeds "
                              f"the model's context of {stage.max_context} tokens")
        eos = self.tokenizer.eos_token_id

        def greedy() -> tuple[list[int], list[float]]:
            cache = stage.new_cache()
            logits = stage(ids, cache, 1)[0, -1]
            tokens, logps = [], []
            while True:
                lp = torch.log_softmax(logits, -1)
                t = int(lp.argmax())
                tokens.append(t)
                logps.append(float(lp[t]))
                if len(tokens) >= max_new or t == eos:
                    return tokens, logps
                logits = stage(torch.tensor([[t]]), cache, 1)[0, -1]

        with self.lock:
            t0 = time.perf_counter()  # compute only, not the wait for the lock
            tokens, logps = self.on_compute(greedy)
            self.forwards += len(tokens)
            compute_s = time.perf_counter() - t0
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Message(
            "ok",
            {"text": text, "mean_logprob": sum(logps) / len(logps), "min_prob": float(torch.tensor(logps).exp().min()),
             "compute_s": compute_s, "device_pid": os.getpid()},
            {"tokens": torch.tensor(tokens, dtype=torch.int64)},
        )

    def op_score(self, msg: Message) -> Message:
        stage = self._whole()
        texts = msg.meta.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise WorkerError("score needs meta.texts: a list of strings")

        def mean_losses() -> list[float]:
            losses = []
            for text in texts:
                ids = torch.tensor([self.tokenizer(text)["input_ids"][: stage.max_context]])
                if ids.shape[1] < 2:
                    losses.append(float("nan"))
                    continue
                logits = stage(ids, stage.new_cache(), 0)[0]
                losses.append(float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])))
            return losses

        with self.lock:
            losses = self.on_compute(mean_losses)
        return Message("ok", {}, {"loss": torch.tensor(losses, dtype=torch.float32)})

    def op_classify(self, msg: Message) -> Message:
        if self.role != "classifier":
            raise WorkerError("this device serves a language model, not a classifier")
        texts = msg.meta.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise WorkerError("classify needs meta.texts: a list of strings")
        with self.lock:
            probs = self.head.predict_proba(self.encoder.embed(texts))
        return Message("ok", {"local_samples": self.local_samples}, {"probs": probs})

    def op_shutdown(self, msg: Message) -> Message:
        threading.Timer(0.05, self._stop).start()
        return Message("ok", {"_close": True})

    def _stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _total_layers(name: str, num_layers: int | None) -> int:
    if name == "tiny-llama":
        total = 2
    else:
        from transformers import AutoConfig

        from fedintel.models.loader import resolve_model_dir

        total = int(AutoConfig.from_pretrained(resolve_model_dir(name)).num_hidden_layers)
    return min(total, num_layers) if num_layers else total


def _parse_slice(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise WorkerError(f"--layers {text!r} is not START:END (e.g. 0:15)") from None


def count_arg(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        if os.getppid() != parent_pid:
            log.warning("parent %d is gone: exiting", parent_pid)
            os._exit(3)


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line."""
    p = argparse.ArgumentParser(prog="python -m fedintel.inference.worker", description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["lm", "classifier"], default="lm")
    p.add_argument("--model", default="tiny-llama", help="built-in model name or local HF directory")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N layers of the model")
    p.add_argument("--layers", default=None, help="START:END slice this device runs (default: all)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory merged into the model (an expert)")
    p.add_argument("--train-data", default=None, help="classifier role: local labelled JSONL (text, label)")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (reported on stdout)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="where the stage computes: cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the stage's weights and activations (sent in this dtype too)")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--pack-weights", choices=["auto", "on", "off"], default="auto",
                   help="prepack the linear layers' weights for oneDNN (CPU, float32/bfloat16); auto: where it applies")
    p.add_argument("--batch-hint", type=count_arg, default=1, help="the rows per step packed weights are laid out for")
    p.add_argument("--delay", type=float, default=0.0, help="extra seconds per request (emulates a slow device)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is no longer the parent")
    p.add_argument("--certs", default=None, metavar="DIR",
                   help="certificate directory: ca.crt, NAME.crt, NAME.key (mutual TLS, the default)")
    p.add_argument("--name", default=None, help="this device's name: its certificate in --certs")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext links, no authentication: loopback experiments only")
    return p


def link_security(args: argparse.Namespace) -> LinkSecurity:
    """The worker's link security from ``--certs``/``--name`` or ``--insecure`` (``ValueError`` if unclear)."""
    if args.insecure:
        if args.certs:
            raise ValueError("--insecure and --certs contradict each other: pass one")
        sec = LinkSecurity.plaintext()
        sec.check_host(args.host, "--host")
        return sec
    if not args.certs or not args.name:
        raise ValueError("pass --certs DIR and --name NAME (this device's certificate, from `fedintel infer certs`), "
                         "or --insecure for plaintext on loopback")
    return LinkSecurity.tls(args.certs, args.name, issue=False)


def main(argv: list[str] | None = None, worker_cls: type[Worker] = Worker,
         parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point: load, listen, print the ready line, serve until told to stop (``worker_cls`` and
    ``parser``: a worker with more operations, e.g. ``fedintel.serving.device``)."""
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"[worker {os.getpid()}] %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    torch.set_num_threads(max(1, args.threads))
    try:
        security = link_security(args)
    except ValueError as err:
        print(json.dumps({"ready": False, "error": str(err)}), flush=True)
        return 2
    try:
        worker = worker_cls(args, security)
        server = FrameServer(worker.handle, security, args.host, args.port, args.max_frame_bytes, args.timeout)
    except Exception as err:
        print(json.dumps({"ready": False, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return 2
    worker.server = server

    def _term(signum: int, frame: Any) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    print(json.dumps({"ready": True, "address": server.address, "pid": os.getpid(),
                      "instance": uuid.uuid4().hex}), flush=True)
    server.serve_forever()
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
