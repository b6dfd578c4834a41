"""``fedintel infer {plan,split,speculative,cascade,multiaccess,experts,analytics,certs}``.

Each mode starts its devices as processes on this machine (or joins running ones, for ``split
--stages``), runs a small workload over mutual-TLS loopback links (a fresh CA per run unless ``--certs
DIR``; plaintext only with ``--insecure``, on loopback), prints a table with the latency measured here
and the latency simulated for the configured devices and links, and stops every process it started,
also on errors and Ctrl-C. ``certs`` writes a CA and device certificates for devices started by hand.
"""

from __future__ import annotations

import argparse
import logging
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config pulls in torch: load it only when a mode runs, so --help stays fast
    from fedintel.inference.config import InferConfig

log = logging.getLogger(__name__)

MODES = ("plan", "split", "speculative", "cascade", "multiaccess", "experts", "analytics")

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "What is 2 plus 2?",
    "Who wrote Romeo and Juliet?",
    "How do I reset my password?",
    "What is the boiling point of water?",
    "Name a primary colour.",
    "What is machine learning?",
]


def add_infer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fedintel infer`` and its modes on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("infer", help="collaborative inference across device processes",
                              description="Collaborative inference: each mode starts device processes, runs a "
                              "workload over mutual-TLS loopback links and reports measured and simulated "
                              "latency.")
    modes = p.add_subparsers(dest="infer_mode", metavar="MODE", required=True)
    helps = {
        "plan": "choose split cut points for the configured devices and links (no processes)",
        "split": "split the model's layers over device processes and generate token by token",
        "speculative": "small draft model here, large model on an edge process verifying k tokens at a time",
        "cascade": "small model here, escalate to the large model when unsure",
        "multiaccess": "several paths to several servers, with failover (optionally kills a node mid-batch)",
        "experts": "route subtasks to expert devices by embedding similarity",
        "analytics": "devices classify with their own models and data; only probabilities leave them",
    }
    for mode in MODES:
        sp = modes.add_parser(mode, help=helps[mode], description=helps[mode])
        sp.add_argument("--config", "-c", default=None, help="infer YAML file (see examples/infer_*.yaml)")
        sp.add_argument("--model", default=None, help="override: model name or directory")
        sp.add_argument("--num-layers", type=int, default=None, help="override: keep the first N layers")
        sp.add_argument("--prompt", default=None, help="override: the prompt")
        sp.add_argument("--max-new-tokens", type=int, default=None, help="override: tokens to generate")
        if mode in ("split", "plan"):
            sp.add_argument("--cuts", default=None, help="override: comma-separated cut points, e.g. 10,20")
        if mode == "split":
            sp.add_argument("--stages", default=None, help="comma-separated addresses of running stage workers "
                            "(their CA in --certs DIR)")
            sp.add_argument("--no-reference", action="store_true", help="skip the single-process comparison")
        if mode in ("speculative", "cascade"):
            sp.add_argument("--draft-model", default=None, help="override: the small model")
            sp.add_argument("--draft-num-layers", type=int, default=None, help="override: small model's layers")
        if mode == "speculative":
            sp.add_argument("--k", type=int, default=None, help="override: draft tokens per round")
        if mode == "cascade":
            sp.add_argument("--threshold", type=float, default=None, help="override: escalation threshold")
        if mode == "multiaccess":
            sp.add_argument("--policy", default=None, help="override: fastest|cheapest|most_available|weighted|round_robin")
            sp.add_argument("--requests", type=int, default=None)
            sp.add_argument("--kill-after", type=int, default=None, help="kill the preferred node after N answers")
        if mode != "plan":
            sp.add_argument("--certs", default=None, metavar="DIR", help="override tls_dir: the CA (and ca.key to "
                            "issue device certificates) for the links; default: a fresh CA for this run")
            sp.add_argument("--insecure", action="store_true", default=None,
                            help="plaintext links without authentication (loopback addresses only)")
        sp.set_defaults(func=_entry(mode))
    c = modes.add_parser("certs", help="write a CA and device certificates for devices started by hand",
                         description="Write a CA (unless DIR has one) and a certificate per --device, valid for the "
                         "device name and each --host; plus 'origin', the certificate of the querying process.")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--device", action="append", default=[], metavar="NAME", help="a device name (repeat)")
    c.add_argument("--host", action="append", default=None, metavar="HOST",
                   help="an IP address or DNS name the devices are reached at (repeat; default 127.0.0.1, localhost)")
    c.set_defaults(func=_cmd_certs)
    return p


def _cmd_certs(args: argparse.Namespace) -> int:
    """``fedintel infer certs``: the CA and device certificates, printed as a list of files."""
    from fedintel.tls import write_device_certs

    try:
        files = write_device_certs(args.out, ["origin", *args.device], args.host or ["127.0.0.1", "localhost"])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


def _entry(mode: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_mode(mode, args)

    return run


def _apply_overrides(cfg: InferConfig, args: argparse.Namespace) -> InferConfig:
    upd: dict[str, Any] = {}
    for field in ("model", "num_layers", "prompt", "max_new_tokens", "draft_model", "draft_num_layers", "k",
                  "threshold", "policy", "requests", "kill_after", "insecure"):
        v = getattr(args, field, None)
        if v is not None:
            upd[field] = v
    if getattr(args, "certs", None):
        upd["tls_dir"] = args.certs
    if getattr(args, "cuts", None):
        upd["cuts"] = [int(x) for x in args.cuts.split(",") if x.strip()]
    if getattr(args, "stages", None):
        upd["stages"] = [x.strip() for x in args.stages.split(",") if x.strip()]
    from fedintel.inference.config import InferConfig, InferConfigError

    try:
        return InferConfig.model_validate({**cfg.model_dump(), **upd})
    except Exception as err:
        raise InferConfigError(str(err)) from None


def run_mode(mode: str, args: argparse.Namespace) -> int:
    """Run one mode; returns the exit code (2 on a user-fixable error)."""
    from rich.console import Console

    from fedintel.inference.config import load_infer_config
    from fedintel.inference.protocol import ProtocolError, RemoteError

    console = Console(width=max(120, Console().width))
    old = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no orphans
    try:
        cfg = _apply_overrides(load_infer_config(getattr(args, "config", None)), args)
        return MODE_FUNCS[mode](cfg, args, console)
    except (ValueError, RuntimeError, ProtocolError, RemoteError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------- helpers
def _security(cfg: InferConfig, joining: str = "") -> Any:
    """This process's LinkSecurity from the config; ``None``: a fresh CA for the devices launched.

    ``joining`` names the config field listing running devices, which must share a CA with us."""
    from fedintel.inference.config import InferConfigError
    from fedintel.inference.protocol import LinkSecurity

    if cfg.insecure:
        return LinkSecurity.plaintext()
    if cfg.tls_dir:
        return LinkSecurity.tls(cfg.tls_dir, "origin")
    if joining:
        raise InferConfigError(f"{joining}: running devices are reached over mutual TLS: pass --certs DIR (tls_dir, "
                               "their CA and a certificate for 'origin', from `fedintel infer certs`), or --insecure "
                               "for plaintext on loopback")
    return None


def _load(name: str, num_layers: int | None, cfg: Any = None) -> Any:
    from fedintel.config import ModelConfig, RuntimeConfig
    from fedintel.models.loader import load_base_model
    from fedintel.runtime import resolve_runtime

    runtime = resolve_runtime(RuntimeConfig(device=cfg.device, dtype=cfg.dtype), apply_threads=False) if cfg else None
    return load_base_model(ModelConfig(name=name, num_layers=num_layers), *([runtime] if runtime else []))


def _runtime_args(cfg: Any) -> list[str]:
    """Worker arguments that place a device process on ``cfg``'s device and precision."""
    return ["--device", cfg.device, "--dtype", cfg.dtype]


def _ids(tok: Any, text: str, chat: bool) -> list[int]:
    if chat and getattr(tok, "chat_template", None):
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    return list(tok(text)["input_ids"])


def _worker_model_args(name: str, num_layers: int | None) -> list[str]:
    return ["--model", name] + (["--num-layers", str(num_layers)] if num_layers else [])


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def _table(title: str, rows: list[tuple[str, str, str]]) -> Any:
    from rich.table import Table

    t = Table(title=title)
    t.add_column("quantity")
    t.add_column("measured (this machine)", justify="right")
    t.add_column("simulated (devices/links)", justify="right")
    for r in rows:
        t.add_row(*r)
    return t


# ----------------------------------------------------------------------------- modes
def _plan(cfg: InferConfig, console: Any, prompt_len: int, model_config: Any) -> Any:
    from fedintel.inference.config import InferConfigError
    from fedintel.inference.planner import evaluate_plan, plan_split, problem_from_config

    problem = problem_from_config(model_config, prompt_len, cfg.max_new_tokens)
    devices, links = cfg.device_specs(), cfg.link_specs()
    if cfg.cuts is not None:
        from fedintel.inference.split import stage_bounds

        bounds = stage_bounds(cfg.cuts, problem.num_layers)
        if len(bounds) > len(devices):
            raise InferConfigError(f"cuts: {len(bounds)} stages but only {len(devices)} devices")
        return evaluate_plan(problem, devices, links, [(i, a, b) for i, (a, b) in enumerate(bounds)], cfg.source)
    return plan_split(problem, devices, links, cfg.source)


def mode_plan(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Print the planner's choice and its modelled latency."""
    from rich.table import Table

    lm = _load(cfg.model, cfg.num_layers)
    plan = _plan(cfg, console, len(_ids(lm.tokenizer, cfg.prompt, cfg.chat)), lm.model.config)
    devices = cfg.device_specs()
    t = Table(title=f"split plan for {cfg.model} ({plan.stages[-1][2]} layers)")
    for c in ("stage", "device", "layers", "compute (sim)", "link in (sim)"):
        t.add_column(c)
    for i, (d, a, b) in enumerate(plan.stages):
        t.add_row(str(i), devices[d].name, f"{a}:{b}", _ms(plan.compute_s[i]), _ms(plan.link_s[i]))
    console.print(t)
    console.print(f"modelled end-to-end latency: {plan.latency_s:.4f} s")
    return 0


def mode_split(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Split generation across processes; compare with one process."""
    import torch

    from fedintel.inference.split import SplitPipeline
    from fedintel.inference.stage import LocalLM, greedy_generate

    torch.set_num_threads(cfg.threads)
    lm = _load(cfg.model, cfg.num_layers, cfg)
    ids = _ids(lm.tokenizer, cfg.prompt, cfg.chat)
    total = len(lm.model.model.layers)
    plan = _plan(cfg, console, len(ids), lm.model.config)
    if cfg.stages:
        pipe = SplitPipeline.connect(cfg.stages, _security(cfg, "stages"), cfg.timeout_s)
    else:
        console.print(f"starting {len(plan.stages)} stage processes: layers "
                      + ", ".join(f"{a}:{b}" for _, a, b in plan.stages))
        pipe = SplitPipeline.launch(cfg.model, plan.cuts, total, cfg.num_layers, security=_security(cfg), threads=cfg.threads,
                                    timeout=cfg.timeout_s, extra_args=_runtime_args(cfg))
    with pipe:
        layout = ", ".join(f"{s.address}:{s.start}:{s.end}" for s in pipe.stages)
        greedy_generate(pipe, ids[:4], 2)  # warm-up
        out = greedy_generate(pipe, ids, cfg.max_new_tokens, lm.tokenizer.eos_token_id, keep_logits=not args.no_reference)
        steps = len(out.decode_s)
        overhead = statistics.median(pipe.stats.overhead_s()[-steps:]) if steps else float("nan")
    hops = len(pipe.stages)
    rows = [("stages", layout, ", ".join(f"{cfg.device_specs()[d].name}:{a}:{b}" for d, a, b in plan.stages)),
            ("tokens/s (split)", f"{out.tokens_per_s:.1f}",
             f"{(cfg.max_new_tokens - 1) / max(1e-12, plan.latency_s):.1f} (whole generation)"),
            ("transport overhead per hop", _ms(overhead / hops), _ms(sum(plan.link_s) / max(1, hops) / max(1, cfg.max_new_tokens))),
            ("end-to-end", f"{out.total_s:.3f} s", f"{plan.latency_s:.3f} s")]
    if not args.no_reference:
        greedy_generate(LocalLM(lm.model), ids[:4], 2)
        ref = greedy_generate(LocalLM(lm.model), ids, cfg.max_new_tokens, lm.tokenizer.eos_token_id, keep_logits=True)
        same = out.tokens == ref.tokens
        dmax = max(float((a - b).abs().max()) for a, b in zip(out.logits, ref.logits, strict=False))
        rows += [("tokens/s (one process)", f"{ref.tokens_per_s:.1f}", ""),
                 ("split / single time per token", f"{(1 / out.tokens_per_s) / (1 / ref.tokens_per_s):.2f}x", ""),
                 ("identical output", f"{same} (max |dlogit| {dmax:.1e})", "")]
    console.print(_table(f"split inference: {cfg.model}", rows))
    console.print(f"answer: {lm.tokenizer.decode(out.tokens, skip_special_tokens=True)!r}")
    return 0 if args.no_reference or out.tokens == ref.tokens else 1


def _draft(cfg: InferConfig) -> tuple[str, Any]:
    """A description and the loaded small model (early exit, another model and/or int8)."""
    from fedintel.inference.config import InferConfigError
    from fedintel.inference.stage import quantize_int8

    name = cfg.draft_model or cfg.model
    layers = cfg.draft_num_layers
    if layers is None and name == cfg.model and not cfg.draft_quantize:
        raise InferConfigError("draft_model: set a small model (draft_model), an early exit (draft_num_layers) "
                               "or draft_quantize: true")
    small = _load(name, layers)
    desc = name + (f" ({layers} layers)" if layers else "")
    if cfg.draft_quantize:
        small.model = quantize_int8(small.model)
        desc += " int8"
    return desc, small


def mode_speculative(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Speculative decoding vs greedy decoding of the large model on an edge process."""
    import torch

    from fedintel.inference.simulate import ModelCost, remote_generate_s, speculative_s
    from fedintel.inference.speculative import speculative_generate
    from fedintel.inference.split import SplitPipeline
    from fedintel.inference.stage import LocalLM, greedy_generate

    torch.set_num_threads(cfg.threads)
    big = _load(cfg.model, cfg.num_layers, cfg)
    dname, small = _draft(cfg)
    ids = _ids(big.tokenizer, cfg.prompt, cfg.chat)
    eos = big.tokenizer.eos_token_id
    with SplitPipeline.launch(cfg.model, [], len(big.model.model.layers), cfg.num_layers, security=_security(cfg),
                              threads=cfg.threads, timeout=cfg.timeout_s, extra_args=_runtime_args(cfg)) as edge:
        draft = LocalLM(small.model)
        greedy_generate(edge, ids[:4], 2)
        ref = greedy_generate(edge, ids, cfg.max_new_tokens, eos)
        spec = speculative_generate(draft, edge, ids, cfg.max_new_tokens, cfg.k, eos)
    devices, links = cfg.device_specs(), cfg.link_specs()
    end, edge_dev, link = devices[0], devices[-1], links[(0, len(devices) - 1)]
    c_big = ModelCost.of(big.model.config)
    c_small = ModelCost.of(small.model.config, 1.0 if cfg.draft_quantize else 4.0)
    sim_large = remote_generate_s(c_big, edge_dev, link, len(ids), len(ref.tokens))
    sim_spec = speculative_s(c_small, c_big, end, edge_dev, link, len(ids), spec.accepted_per_round, cfg.k)
    rows = [("identical to large greedy", str(spec.tokens == ref.tokens), ""),
            ("acceptance rate", f"{spec.acceptance_rate:.2f}", ""),
            ("tokens per large-model call", f"{spec.tokens_per_round:.2f}", ""),
            ("always-large latency", f"{ref.total_s:.3f} s", f"{sim_large:.3f} s"),
            ("speculative latency", f"{spec.total_s:.3f} s", f"{sim_spec:.3f} s"),
            ("speculative / always-large", f"{spec.total_s / ref.total_s:.2f}x", f"{sim_spec / sim_large:.2f}x")]
    console.print(_table(f"speculative decoding: draft {dname}, target {cfg.model}, k={cfg.k}", rows))
    return 0 if spec.tokens == ref.tokens else 1


def mode_cascade(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Confidence cascade vs always-large."""
    import torch

    from fedintel.inference.cascade import Cascade
    from fedintel.inference.simulate import ModelCost, cascade_s, remote_generate_s
    from fedintel.inference.split import SplitPipeline
    from fedintel.inference.stage import LocalLM

    torch.set_num_threads(cfg.threads)
    big = _load(cfg.model, cfg.num_layers, cfg)
    dname, small = _draft(cfg)
    prompts = [_ids(big.tokenizer, p, cfg.chat) for p in (cfg.prompts or DEFAULT_PROMPTS)]
    with SplitPipeline.launch(cfg.model, [], len(big.model.model.layers), cfg.num_layers, security=_security(cfg),
                              threads=cfg.threads, timeout=cfg.timeout_s, extra_args=_runtime_args(cfg)) as edge:
        casc = Cascade(LocalLM(small.model), edge, cfg.threshold, cfg.confidence, cfg.max_new_tokens,
                       big.tokenizer.eos_token_id)
        rep = casc.run(prompts)
    devices, links = cfg.device_specs(), cfg.link_specs()
    end, edge_dev, link = devices[0], devices[-1], links[(0, len(devices) - 1)]
    c_big = ModelCost.of(big.model.config)
    c_small = ModelCost.of(small.model.config, 1.0 if cfg.draft_quantize else 4.0)
    sim_c = sum(cascade_s(c_small, c_big, end, edge_dev, link, len(p), cfg.max_new_tokens, not a.served_locally)
                for p, a in zip(prompts, rep.answers, strict=True))
    sim_l = sum(remote_generate_s(c_big, edge_dev, link, len(p), cfg.max_new_tokens) for p in prompts)
    rows = [("queries", str(len(prompts)), ""),
            ("served on the end device", f"{rep.local_fraction:.0%}", ""),
            ("answers equal to the large model's", f"{rep.agreement:.0%}", ""),
            ("cascade / always-large latency", f"{rep.latency_ratio:.2f}x", f"{sim_c / sim_l:.2f}x")]
    console.print(_table(f"cascade: {dname} -> {cfg.model}, threshold {cfg.threshold} ({cfg.confidence})", rows))
    return 0


def mode_multiaccess(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Requests over several paths with injected failures."""
    from fedintel.inference.config import default_paths
    from fedintel.inference.launcher import WorkerGroup
    from fedintel.inference.multiaccess import (
        AllPathsFailed,
        FaultyLink,
        MultiAccessClient,
        rank_paths,
        simulate_multiaccess,
    )

    paths_cfg = cfg.paths or default_paths()
    cfg = cfg.model_copy(update={"paths": paths_cfg})
    prompts = cfg.prompts or DEFAULT_PROMPTS
    links: list[FaultyLink] = []
    security = _security(cfg, "paths.address" if any(p.address for p in paths_cfg) else "")
    with WorkerGroup(security, threads=cfg.threads) as group:
        need = [p for p in paths_cfg if p.address is None]
        workers = group.start([(p.name, _worker_model_args(cfg.model, cfg.num_layers)) for p in need])
        launched = {p.name: w for p, w in zip(need, workers, strict=True)}
        addresses = []
        for i, p in enumerate(paths_cfg):
            target = p.address or launched[p.name].address
            link = FaultyLink(target, latency_s=p.latency_s, drop_prob=1.0 - p.availability, seed=i)
            links.append(link)
            addresses.append(link.address)
        paths = cfg.access_paths(addresses)
        client = MultiAccessClient(paths, group.security, cfg.policy, timeout=cfg.timeout_s, cooldown_s=2.0, max_rounds=4)
        preferred = paths_cfg[rank_paths(paths, cfg.policy, client.request_bytes)[0]].name
        answered = [0]
        lock = threading.Lock()
        if cfg.kill_after is not None and preferred in launched:
            def watch() -> None:
                while True:
                    with lock:
                        if answered[0] >= cfg.kill_after:  # type: ignore[operator]
                            break
                    time.sleep(0.005)
                group.kill(launched[preferred])
                console.print(f"[yellow]killed the node behind {preferred}[/yellow]")

            threading.Thread(target=watch, daemon=True).start()

        def make(i: int) -> tuple[str, dict, dict]:
            return "generate", {"prompt": prompts[i % len(prompts)], "max_new_tokens": cfg.max_new_tokens}, {}

        def counted(i: int) -> Any:
            try:
                return client.request(*make(i), index=i)
            except AllPathsFailed as err:
                return err
            finally:
                with lock:
                    answered[0] += 1

        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        with ThreadPoolExecutor(cfg.concurrency) as pool:
            results = list(pool.map(counted, range(cfg.requests)))
        wall = time.perf_counter() - t0
        client.close()
        for link in links:
            link.close()
    ok = [r for r in results if not isinstance(r, AllPathsFailed)]
    lat = sorted(r.seconds for r in ok)
    compute = statistics.median(float(r.reply.meta.get("compute_s", 0.0)) for r in ok) if ok else 0.0
    sim = simulate_multiaccess(paths, cfg.policy, 10_000, client.request_bytes, compute_s=compute, detect_s=0.05)
    share = {p.name: sum(r.path == p.name for r in ok) / max(1, len(ok)) for p in paths}
    rows = [("requests answered", f"{len(ok)}/{len(results)}", f"{sim.success_rate:.1%}"),
            ("retried on another path", str(sum(r.retried for r in ok)), ""),
            ("mean latency", _ms(statistics.mean(lat)) if lat else "-", _ms(sim.mean_s)),
            ("p95 latency", _ms(lat[int(0.95 * (len(lat) - 1))]) if lat else "-", _ms(sim.p95_s)),
            ("batch wall time", f"{wall:.2f} s", ""),
            *[(f"served via {n}", f"{share[n]:.0%}", f"{sim.served_by[n]:.0%}") for n in share]]
    console.print(_table(f"multi-access, policy {cfg.policy} (preferred: {preferred})", rows))
    return 0 if len(ok) == len(results) else 1


def mode_experts(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Route queries to expert devices by embedding similarity; report routing accuracy."""
    from fedintel.inference.embedding import Encoder, domain_corpus
    from fedintel.inference.experts import EmbeddingRouter, ExpertEnsemble, routing_accuracy
    from fedintel.inference.launcher import WorkerGroup

    domains = list(cfg.domains)
    rows_all = domain_corpus(domains, per_domain=60, seed=0)
    train = {d: [t for t, y in rows_all if domains[y] == d][:10] for d in domains}
    used = {t for v in train.values() for t in v}
    test = [(t, domains[y]) for t, y in rows_all if t not in used]
    router = EmbeddingRouter(Encoder("minilm-l6"), train)
    acc = routing_accuracy(router, [t for t, _ in test], [d for _, d in test])
    with WorkerGroup(_security(cfg), threads=cfg.threads) as group:
        specs = []
        for d in domains:
            extra = ["--adapter", cfg.adapters[d]] if d in cfg.adapters else []
            specs.append((d, _worker_model_args(cfg.model, cfg.num_layers) + extra))
        workers = group.start(specs)
        ens = ExpertEnsemble({w.name: group.client(w, cfg.timeout_s) for w in workers}, router, cfg.max_new_tokens)
        try:
            ans = ens.answer(cfg.prompt)
        finally:
            ens.close()
    from rich.table import Table

    t = Table(title=f"experts: {len(domains)} devices, routing by MiniLM similarity")
    t.add_column("subtask")
    t.add_column("expert")
    t.add_column("answer")
    for sub, e, a in ans.parts:
        t.add_row(sub, e, a.strip()[:80])
    console.print(t)
    console.print(f"routing accuracy on {len(test)} held-out chatterbot samples: {acc:.1%} "
                  f"(chance {1 / len(domains):.1%}); query latency {ans.seconds:.3f} s (routing {ans.route_s:.3f} s)")
    return 0


def mode_analytics(cfg: InferConfig, args: argparse.Namespace, console: Any) -> int:
    """Federated classification with non-iid local data; accuracy vs each device alone."""
    import tempfile
    from pathlib import Path

    from fedintel.inference.analytics import FederatedClassifier
    from fedintel.inference.embedding import domain_corpus, write_labelled
    from fedintel.inference.launcher import WorkerGroup

    domains = list(cfg.domains)
    rows = domain_corpus(domains, per_domain=40, seed=1)
    test, train = rows[: len(rows) // 4], rows[len(rows) // 4:]
    n = cfg.num_devices
    tmp = Path(tempfile.mkdtemp(prefix="fedintel-analytics-"))
    specs = []
    for k in range(n):
        mine = [r for r in train if r[1] % n == k]
        others = [r for r in train if r[1] % n != k][k::10]
        local = mine + others
        path = write_labelled(tmp / f"device{k}.jsonl", [t for t, _ in local], [y for _, y in local])
        specs.append((f"device{k}", ["--role", "classifier", "--model", "minilm-l6", "--train-data", str(path),
                                     "--num-labels", str(len(domains))]))
    from rich.table import Table

    t = Table(title=f"federated analytics: {n} devices, {len(domains)} domains, non-iid local data")
    t.add_column("aggregation")
    t.add_column("federated accuracy", justify="right")
    t.add_column("best single device", justify="right")
    t.add_column("bytes up", justify="right")
    with WorkerGroup(_security(cfg), threads=cfg.threads) as group:
        workers = group.start(specs)
        for method in ("mean_probs", "weighted_probs", "vote"):
            fed = FederatedClassifier({w.name: group.client(w, cfg.timeout_s) for w in workers}, method)
            rep = fed.evaluate([x for x, _ in test], [y for _, y in test])
            fed.close()
            t.add_row(method, f"{rep.federated_accuracy:.1%}", f"{rep.best_single:.1%}", str(rep.bytes_up))
    console.print(t)
    return 0


MODE_FUNCS: dict[str, Callable[[InferConfig, argparse.Namespace, Any], int]] = {
    "plan": mode_plan,
    "split": mode_split,
    "speculative": mode_speculative,
    "cascade": mode_cascade,
    "multiaccess": mode_multiaccess,
    "experts": mode_experts,
    "analytics": mode_analytics,
}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m fedintel.inference.cli infer split ...``) until the lead wires it in."""
    parser = argparse.ArgumentParser(prog="fedintel")
    add_infer_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
