"""Load test of ``fedintel serve`` (issue #20): 1, 4 and 16 concurrent users on loopback, real HTTP.

For each serving set-up (one process / a 2-stage split) with batching on (``max_batch`` 16) and off (1, one
request at a time), the service is started as users start it, ``python -m fedintel serve`` in a process of its
own (device processes as usual, mutual TLS; the load generator never shares a process, or its GIL, with the
service), and
each user sends streaming chat requests (greedy, ``max_tokens`` 32) one after another with httpx + asyncio,
bounded by ``--requests`` per user and ``--seconds`` per level. Reported per level: p50 / p99 latency, p50
time to first token, tokens/s of the whole service, and the service overhead: the share of a request's
latency outside the devices' path (client latency minus queue + prefill + decode + stall as the scheduler
timed them: HTTP, JSON, SSE, tokenization, detokenization), and the prefill stall: the share of a request's
latency it spent in the batch waiting while newcomers were prefilled (scheduling, not service overhead).
Also: tokens/s while every user is busy (from the start until the first user has had its last answer; after
that the batch thins out as users finish, which a run of a few requests per user cannot avoid), tokens per
answer, the mean batch and the decode step time (from ``/health``), and per level a line splitting the wall
time into decode, prefill and idle.

    python benchmarks/serve.py            # full: SmolLM2-135M, users 1/4/16 (tens of minutes on 2 cores)
    python benchmarks/serve.py --quick    # smoke: 2 layers, users 1/4, one request each
    python benchmarks/serve.py --profile  # the device alone, in this process: decode step at 1 and 16 rows,
                                          # weights packed (oneDNN) and not, interleaved; no HTTP
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from _common import table  # noqa: E402

PROMPTS = ["What is the capital of France?", "Tell me a joke about computers.", "What is 2 plus 2?",
           "Who wrote Romeo and Juliet?", "How do I reset my password?", "What is the boiling point of water?",
           "Name a primary colour.", "What is machine learning?"]


async def one(c: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": "base", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True}
    t0 = time.perf_counter()
    ttft, last, arrivals = None, None, []
    async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            j = json.loads(line[5:])
            if "content" in j["choices"][0]["delta"]:
                arrivals.append(time.perf_counter())
            if ttft is None and j["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
            if j["choices"][0]["finish_reason"]:
                last = j
    lat = time.perf_counter() - t0
    f = last["fedintel"]
    inside = f["queue_s"] + f["prefill_s"] + f["decode_s"] + f["stall_s"]
    return {"latency": lat, "ttft": ttft if ttft is not None else lat, "tokens": last["usage"]["completion_tokens"],
            "overhead": max(0.0, lat - inside) / lat, "stall": f["stall_s"] / lat, "arrivals": arrivals,
}


async def level(url: str, users: int, requests: int, seconds: float, max_tokens: int) -> dict:
    out: list[dict] = []
    done: list[float] = []
    deadline = time.perf_counter() + seconds

    async def user(u: int) -> None:
        async with httpx.AsyncClient(timeout=600) as c:
            for k in range(requests):
                if time.perf_counter() > deadline:
                    break
                out.append(await one(c, url, PROMPTS[(u + k) % len(PROMPTS)], max_tokens))
        done.append(time.perf_counter())

    before = httpx.get(url + "/health").json()["paths"]
    t0 = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(users)))
    wall = time.perf_counter() - t0
    after = httpx.get(url + "/health").json()["paths"]
    steps, rows_, step_s, prefills, prefill_s = (sum(after[p][k] - before[p][k] for p in after)
                                                 for k in ("decode_steps", "decoded_rows", "decode_s", "prefills",
                                                           "prefill_s"))
    print(f"  {users} users: wall {wall:.1f} s = decode {step_s:.1f} s ({steps} steps, {rows_} rows) + prefill "
          f"{prefill_s:.1f} s ({prefills} prefills) + idle {wall - step_s - prefill_s:.1f} s", flush=True)
    # steady state: from the start until the first user has sent its last request and had it answered (before
    # that, every user keeps a request in flight; after it, the batch thins out as users finish)
    busy_end = min(done)
    busy = sum(1 for r in out for t in r["arrivals"] if t <= busy_end) / (busy_end - t0)
    lats = sorted(r["latency"] for r in out)
    p99 = lats[min(len(lats) - 1, int(round(0.99 * (len(lats) - 1))))]
    return {"n": len(out), "p50": statistics.median(lats), "p99": p99,
            "ttft": statistics.median(r["ttft"] for r in out), "tok_s": sum(r["tokens"] for r in out) / wall,
            "busy_tok_s": busy, "tokens": statistics.mean(r["tokens"] for r in out),
            "batch": rows_ / steps if steps else 0.0, "step_ms": 1000 * step_s / steps if steps else 0.0,
            "overhead": statistics.median(r["overhead"] for r in out),
            "stall": statistics.median(r["stall"] for r in out)}


class ServeProcess:
    """``python -m fedintel serve`` on a free loopback port, as a user starts it; :meth:`stop` ends it (SIGINT:
    the service stops its device processes)."""

    def __init__(self, cfg: dict, workdir: Path, name: str, start_timeout: float = 600) -> None:
        import yaml

        conf = workdir / f"{name}.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "fedintel", "serve", "--config", str(conf), "--port",
                                      str(port)], stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fedintel serve ({name}) exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fedintel serve ({name}) did not answer within {start_timeout} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def profile_one(args: argparse.Namespace) -> None:
    """One variant of ``--profile`` (``--profile-variant DTYPE,PACK,WHERE``) in this process, one device as in a
    device process: prints the mean decode step at 1 and 16 rows (seconds) as JSON."""
    import threading

    import torch

    from fedintel.inference.protocol import Message
    from fedintel.serving.device import ServingWorker, build_parser

    dtype, pack, where = args.profile_variant.split(",")
    torch.set_num_threads(args.threads)
    w = ServingWorker(build_parser().parse_args(
        ["--model", args.model, "--insecure", "--threads", str(args.threads), "--dtype", dtype, "--pack-weights", pack]
        + (["--num-layers", str(args.num_layers)] if args.num_layers else [])), None)
    # "compute": through handle(), on the device's compute thread, as a request from the link; "other": the
    # operations called directly on a thread that did not pack the weights (how the device ran before)
    call = w.handle if where == "compute" else (lambda m: getattr(w, f"op_{m.op}")(m))
    rng = random.Random(0)
    steps = 4 if args.quick else 15

    def step_s(rows: int) -> float:
        sessions = [f"r{rows}-{i}" for i in range(rows)]
        for i, s in enumerate(sessions):
            ids = [rng.randrange(100, 40000) for _ in range(30 + (7 * i) % 25)]
            call(Message("serve_prefill", {"session": s}, {"input_ids": torch.tensor([ids])}))

        def decode() -> None:
            x = torch.randint(100, 40000, (rows, 1))
            call(Message("serve_decode", {"rows": sessions}, {"input_ids": x}))

        for _ in range(2):
            decode()
        t0 = time.perf_counter()
        for _ in range(steps):
            decode()
        took = (time.perf_counter() - t0) / steps
        call(Message("serve_end", {"sessions": sessions}))
        return took

    out: dict[int, float] = {}
    t = threading.Thread(target=lambda: out.update({rows: step_s(rows) for rows in (1, 16)}))
    t.start()
    t.join()
    print(json.dumps(out))


def profile(args: argparse.Namespace) -> None:
    """The serving device alone, no HTTP: one decode step at 1 and at 16 rows (prompts of 30-54 tokens), with
    the linears packed for oneDNN and not; each variant in a fresh process holding one device (as a device
    process does), the variants interleaved over ``--repeats``. A third variant calls the packed device's
    operations from a thread that did not pack its weights, which is how a device ran before it had a compute
    thread."""
    dtypes = args.dtypes.split(",")
    variants = [(d, pack, where) for d in dtypes for pack, where in (("off", "compute"), ("on", "compute"),
                                                                    ("on", "other"))]
    base = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--threads", str(args.threads)]
    base += ["--num-layers", str(args.num_layers)] if args.num_layers else []
    base += ["--quick"] if args.quick else []
    times: dict[tuple[str, str, str, int], list[float]] = {}
    for rep in range(max(1, args.repeats)):
        for v in variants:
            res = subprocess.run([*base, "--profile-variant", ",".join(v)], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"--profile-variant {','.join(v)} failed:\n{res.stderr[-3000:]}")
            for rows, s in json.loads(res.stdout.strip().splitlines()[-1]).items():
                times.setdefault((*v, int(rows)), []).append(s)
        print(f"repeat {rep + 1}/{max(1, args.repeats)} done", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    names = {"compute": "its compute thread", "other": "another thread"}
    out = []
    for d, pack, where in variants:
        one, full = med[(d, pack, where, 1)], med[(d, pack, where, 16)]
        out.append([d, pack, names[where], f"{1000 * one:.1f}", f"{1000 * full:.1f}", f"{16 * one / full:.2f}x",
                    f"{1 / one:.1f}", f"{16 / full:.1f}"])
    print()
    if args.repeats > 1:
        print(f"Each step: the median over {args.repeats} repeats.\n")
    print(table(["dtype", "packed", "called on", "1-row step (ms)", "16-row step (ms)", "full batches give",
                 "tokens/s at 1", "tokens/s at 16"], out))
    for d in dtypes:
        on, off, other = (d, "on", "compute"), (d, "off", "compute"), (d, "on", "other")
        print(f"{d}: packing makes the 1-row step {med[(*on, 1)] / med[(*off, 1)]:.2f}x and the 16-row step "
              f"{med[(*on, 16)] / med[(*off, 16)]:.2f}x as long; called from a thread that did not pack, "
              f"{med[(*other, 1)] / med[(*on, 1)]:.2f}x and {med[(*other, 16)] / med[(*on, 16)]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 layers, users 1 and 4, one request each")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--users", default="1,4,16")
    ap.add_argument("--requests", type=int, default=4, help="requests per user per level")
    ap.add_argument("--seconds", type=float, default=300, help="time bound per level (no new requests after)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each device process (runtime.threads)")
    ap.add_argument("--setups", default="one,split", help="which set-ups: one (one process), split (2 stages)")
    ap.add_argument("--batching", default="on,off", help="batching on, off (one request at a time), or both")
    ap.add_argument("--repeats", type=int, default=1,
                    help="repeat every level; rows are medians, ratios are per repeat (on and off interleaved)")
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="runtime.dtype of the device processes, each a set-up of its own (batching is compared "
                         "within one dtype)")
    ap.add_argument("--pack-weights", default="auto", choices=["auto", "on", "off"],
                    help="the services' pack_weights (oneDNN-prepacked linears)")
    ap.add_argument("--profile", action="store_true",
                    help="time the device's decode step in this process instead (1 and 16 rows, packed or not)")
    ap.add_argument("--profile-variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_variant:
        profile_one(args)
        return
    if args.quick:
        args.num_layers, args.users, args.requests, args.seconds = 2, "1,4", 1, 60
    if args.profile:
        profile(args)
        return
    from fedintel.serving.config import ServeConfig

    users = [int(u) for u in args.users.split(",")]
    total = args.num_layers or 30
    setups = [(n, c) for key, n, c in (("one", "one process", []), ("split", "split 2 stages", [total // 2]))
              if key in args.setups.split(",")]
    if args.quick:
        setups = setups[:1]
    modes = [m == "on" for m in args.batching.split(",")]
    dtypes = args.dtypes.split(",")
    # metrics[(setup, dtype, batching, users)] = one dict per repeat
    metrics: dict[tuple[str, str, str, int], list[dict]] = {}
    for (name, cuts), dtype in ((s, d) for s in setups for d in dtypes):
        # batching on and off run side by side, their levels interleaved (on, off, on, off...): each ratio
        # compares measurements minutes apart, not a quarter of an hour (this machine drifts by ±10-15 %)
        services: dict[str, ServeProcess] = {}
        workdir = Path(tempfile.mkdtemp(prefix="fedintel-serve-bench-"))
        try:
            for batching in modes:
                cfg = ServeConfig.model_validate({
                    "model": {"name": args.model, "num_layers": args.num_layers},
                    "runtime": {"device": "cpu", "threads": args.threads, "dtype": dtype},
                    "pack_weights": args.pack_weights,
                    "paths": [{"name": "p", "cuts": cuts}],
                    "limits": {"max_batch": 16 if batching else 1, "max_concurrency": 64,
                               "max_tokens": args.max_tokens, "default_max_tokens": args.max_tokens},
                })
                mode = "on" if batching else "off"
                services[mode] = ServeProcess(cfg.model_dump(mode="json"), workdir, f"{name.split()[0]}-{dtype}-{mode}")
            for running in services.values():  # warm-up: a fresh process's first steps are slow
                asyncio.run(level(running.url, 1, 2, 60, args.max_tokens))
            for rep, u, mode in ((r, u, m) for r in range(args.repeats) for u in users for m in services):
                print(f"{name} | {dtype} | batching {mode} | {u} users | repeat {rep + 1}/{args.repeats}", flush=True)
                m = asyncio.run(level(services[mode].url, u, args.requests, args.seconds, args.max_tokens))
                metrics.setdefault((name, dtype, mode, u), []).append(m)
        finally:
            for running in services.values():
                running.stop()
    rows = []
    for (name, dtype, mode, u), ms in metrics.items():
        med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        rows.append([name, dtype, mode, u, int(med["n"]), f"{med['p50']:.2f}", f"{med['p99']:.2f}", f"{med['ttft']:.3f}",
                     f"{med['tok_s']:.1f}", f"{100 * med['overhead']:.1f} %", f"{100 * med['stall']:.1f} %",
                     f"{med['busy_tok_s']:.1f}", f"{med['tokens']:.1f}", f"{med['batch']:.1f}", f"{med['step_ms']:.0f}"])
    print()
    if args.repeats > 1:
        print(f"Each row: the median over {args.repeats} repeats.\n")
    print(table(["setup", "dtype", "batching", "users", "requests", "p50 latency (s)", "p99 latency (s)",
                 "p50 TTFT (s)", "tokens/s", "service overhead", "prefill stall", "all-busy tokens/s",
                 "tokens/answer", "mean batch", "decode step (ms)"], rows))

    def ratios(on: list[dict], off: list[dict], key: str) -> str:
        rs = sorted(a[key] / b[key] for a, b in zip(on, off, strict=True))  # repeat by repeat
        spread = f" (repeats: {', '.join(f'{r:.2f}' for r in rs)})" if len(rs) > 1 else ""
        return f"{statistics.median(rs):.2f}x{spread}"

    for (name, _), dtype, u in ((s, d, u) for s in setups for d in dtypes for u in users):
        on, off = metrics.get((name, dtype, "on", u)), metrics.get((name, dtype, "off", u))
        if on and off:
            print(f"{name}, {dtype}, {u} users: batching gives {ratios(on, off, 'tok_s')} the tokens/s; "
                  f"{ratios(on, off, 'busy_tok_s')} while every user is busy")
    # across dtypes: batched in each dtype against the fastest one-at-a-time service of the same set-up
    for (name, _), u in ((s, u) for s in setups for u in users):
        offs = {d: metrics[(name, d, "off", u)] for d in dtypes if (name, d, "off", u) in metrics}
        if len(dtypes) > 1 and offs:
            best = max(offs, key=lambda d: statistics.median(m["tok_s"] for m in offs[d]))
            for d in dtypes:
                on = metrics.get((name, d, "on", u))
                if on:
                    print(f"{name}, {u} users: batched {d} gives {ratios(on, offs[best], 'tok_s')} the tokens/s of "
                          f"the fastest one-at-a-time service ({best})")


if __name__ == "__main__":
    main()
