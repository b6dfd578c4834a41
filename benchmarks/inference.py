"""Collaborative-inference benchmark: prints tables of measured (loopback, real processes) numbers.

    .venv/bin/python benchmarks/inference.py [--quick] [--only split ...]

1. transport: round trip of a frame to a device process over mutual TLS (1x1xhidden and 1x128x768 fp32;
   TLS against plain TCP: benchmarks/tls_links.py);
2. split runtime: SmolLM2-135M tokens/s in one process vs 2 and 3 stage processes; added time per hop;
3. speculative decoding and the confidence cascade vs always asking the large model (SmolLM2-135M, 30
   layers, fp32, on an edge process; the end device's small model is its int8 version, or an early exit);
4. multi-access: success rate and latency with relays dropping requests and a node killed mid-batch.

Every device is its own OS process with one torch thread and its linears prepacked for oneDNN (as `fedintel
infer` runs them; a model that runs in this process is packed too); the machine has 2 shared cores, so absolute
numbers move with load: compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch
from rich.console import Console
from rich.table import Table

from fedintel.config import ModelConfig
from fedintel.inference.cascade import Cascade
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.modes.common import DEFAULT_PROMPTS
from fedintel.inference.multiaccess import (
    AccessPath,
    AllPathsFailed,
    FaultyLink,
    MultiAccessClient,
    rank_paths,
    simulate_multiaccess,
)
from fedintel.inference.packing import pack_linears
from fedintel.inference.planner import DeviceSpec, LinkSpec
from fedintel.inference.protocol import LinkSecurity
from fedintel.inference.simulate import ModelCost, cascade_s, remote_generate_s, speculative_s
from fedintel.inference.speculative import speculative_generate
from fedintel.inference.split import SplitPipeline
from fedintel.inference.stage import LocalLM, greedy_generate, quantize_int8
from fedintel.models.loader import load_base_model

PROMPTS = DEFAULT_PROMPTS  # the prompts `fedintel infer` plays by default
console = Console(width=170)


def chat_ids(tok, text: str) -> list[int]:
    out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def table(title: str, cols: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right" if c != cols[0] else "left")
    for r in rows:
        t.add_row(*r)
    console.print(t)


def bench_transport(security: LinkSecurity, reps: int) -> None:
    rows = []
    with WorkerGroup(security) as group:
        (w,) = group.start([("echo", ["--model", "tiny-llama"])])
        c = group.client(w)
        for name, t in [("1x1x576 fp32 (SmolLM2 hidden)", torch.randn(1, 1, 576)),
                        ("1x128x768 fp32", torch.randn(1, 128, 768))]:
            for _ in range(20):
                c.request("echo", {}, {"x": t})
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                c.request("echo", {}, {"x": t})
                ts.append(time.perf_counter() - t0)
            rows.append([name, f"{statistics.median(ts) * 1e3:.3f}", f"{sorted(ts)[int(0.9 * len(ts))] * 1e3:.3f}"])
        c.close()
    table("transport: round trip to a device process over mutual TLS 1.3 (no pickle)",
          ["payload", "median ms", "p90 ms"], rows)


def bench_split(security: LinkSecurity, new_tokens: int, reps: int) -> None:
    """Single process vs 2 and 3 stage processes, each with its linears packed for oneDNN and not, all
    interleaved; the best of ``reps`` runs of each (the machine is shared, so the minimum is the least
    disturbed measurement)."""
    plain, packed = (load_base_model(ModelConfig(name="smollm2-135m")) for _ in range(2))
    pack_linears(packed.model, 1)  # as the stage processes pack theirs (pack_weights: auto)
    ids = chat_ids(plain.tokenizer, PROMPTS[0])
    configs: list[tuple[str, list[int]]] = [("1 (this process)", []), ("2 processes", [15]), ("3 processes", [10, 20])]
    lms: dict[tuple[str, bool], object] = {(configs[0][0], True): LocalLM(packed.model),
                                           (configs[0][0], False): LocalLM(plain.model)}
    pipes = {(name, pack): SplitPipeline.launch("smollm2-135m", cuts, 30, security=security,
                                                extra_args=["--pack-weights", "on" if pack else "off"])
             for name, cuts in configs[1:] for pack in (True, False)}
    lms.update(pipes)
    best = dict.fromkeys(lms, float("inf"))
    tokens: dict[tuple[str, bool], list[int]] = {}
    overhead: dict[tuple[str, bool], list[float]] = {key: [] for key in lms}
    try:
        for lmx in lms.values():
            greedy_generate(lmx, ids, 4)
        for _ in range(reps):
            for key, lmx in lms.items():
                r = greedy_generate(lmx, ids, new_tokens)
                best[key] = min(best[key], statistics.median(r.decode_s))
                tokens[key] = r.tokens
                if key in pipes:
                    overhead[key] += pipes[key].stats.overhead_s()[-len(r.decode_s):]
    finally:
        for p in pipes.values():
            p.close()
    reference = tokens[(configs[0][0], False)]
    single = {pack: best[(configs[0][0], pack)] for pack in (True, False)}
    rows = []
    for name, cuts in configs:
        hops = len(cuts) + 1
        on, off = best[(name, True)], best[(name, False)]
        same = all(tokens[(name, pack)] == reference for pack in (True, False))
        rows.append([name, ",".join(map(str, cuts)) or "-", f"{1 / on:.1f}", f"{1 / off:.1f}", f"{on / off:.2f}",
                     f"{on / single[True]:.2f}", f"{off / single[False]:.2f}",
                     f"{(on - single[True]) / hops * 1e3:.2f}" if cuts else "-",
                     f"{statistics.median(overhead[(name, True)]) / hops * 1e3:.2f}" if cuts else "-",
                     "yes" if same else "NO"])
    table(f"split runtime: SmolLM2-135M (30 layers, hidden 576), greedy, {new_tokens} tokens, 1 thread per process, "
          f"best of {reps} interleaved runs; packed = linears prepacked for oneDNN (pack_weights: auto)",
          ["stages", "cuts", "tokens/s packed", "tokens/s unpacked", "packed / unpacked time",
           "time vs 1 process (packed)", "time vs 1 process (unpacked)", "added ms/hop (packed)",
           "transport ms/hop (median)", "same tokens"], rows)


def bench_vertical(security: LinkSecurity, new_tokens: int, early_exit: list[int]) -> None:
    big = load_base_model(ModelConfig(name="smollm2-135m"))
    tok, eos = big.tokenizer, big.tokenizer.eos_token_id
    prompts = [chat_ids(tok, p) for p in PROMPTS]
    # the setting of examples/infer_vertical.yaml: a busy edge server, a phone running int8 weights
    phone = DeviceSpec("phone", 5e11, mem_bw_bytes_per_s=2e10)
    edge_dev = DeviceSpec("edge", 1e13, mem_bw_bytes_per_s=2e10)
    link = LinkSpec(100e6, 0.005)
    c_big = ModelCost.of(big.model.config)
    drafts = [("int8 (whole model)", quantize_int8(big.model), ModelCost.of(big.model.config, 1.0))]
    for nl in early_exit:
        small = load_base_model(ModelConfig(name="smollm2-135m", num_layers=nl))
        pack_linears(small.model, 1)  # as `fedintel infer` packs an fp32 draft (the edge process packs its own)
        drafts.append((f"early exit {nl}/30 layers", small.model, ModelCost.of(small.model.config)))
    spec_rows, casc_rows = [], []
    with SplitPipeline.launch("smollm2-135m", [], 30, security=security) as edge:
        greedy_generate(edge, prompts[0], 4)
        refs = [greedy_generate(edge, p, new_tokens, eos) for p in prompts]
        sim_large = sum(remote_generate_s(c_big, edge_dev, link, len(p), len(r.tokens))
                        for p, r in zip(prompts, refs, strict=True))
        for name, model, c_small in drafts:
            draft = LocalLM(model)
            greedy_generate(draft, prompts[0], 4)
            for k in (2, 4):
                same = acc = drafted = rounds = ntok = 0
                tot = sim = large_s = 0.0
                for p in prompts:  # always-large right before each speculative run: same machine load
                    r = greedy_generate(edge, p, new_tokens, eos)
                    large_s += r.total_s
                    s = speculative_generate(draft, edge, p, new_tokens, k, eos)
                    same += s.tokens == r.tokens
                    tot += s.total_s
                    acc += s.accepted
                    drafted += s.drafted
                    rounds += s.rounds
                    ntok += len(s.tokens)
                    sim += speculative_s(c_small, c_big, phone, edge_dev, link, len(p), s.accepted_per_round, k)
                spec_rows.append([name, str(k), f"{same}/{len(prompts)}", f"{acc / max(1, drafted):.2f}",
                                  f"{ntok / rounds:.2f}", f"{tot / large_s:.2f}", f"{sim / sim_large:.2f}"])
            for thr in (0.3, 0.5, 0.7):
                casc = Cascade(draft, edge, thr, "mean_prob", new_tokens, eos)
                rep = casc.run(prompts, compare_with_large=True)  # interleaved with always-large
                sim_c = sum(cascade_s(c_small, c_big, phone, edge_dev, link, len(p), new_tokens, not a.served_locally)
                            for p, a in zip(prompts, rep.answers, strict=True))
                casc_rows.append([name, f"{thr}", f"{rep.local_fraction:.0%}", f"{rep.agreement:.0%}",
                                  f"{rep.latency_ratio:.2f}", f"{sim_c / sim_large:.2f}"])
    table(f"speculative decoding vs always-large (SmolLM2-135M fp32 on an edge process), {len(prompts)} chat prompts x "
          f"{new_tokens} tokens; simulated: phone 20 GB/s, busy edge 20 GB/s, 100 Mbit/s, 5 ms",
          ["draft on the end device", "k", "identical", "acceptance", "tokens/large call", "measured ratio",
           "simulated ratio"], spec_rows)
    table("confidence cascade vs always-large (same setting); quality = answers identical to the large model's",
          ["small model", "threshold", "served locally", "= large answer", "measured ratio", "simulated ratio"],
          casc_rows)


MA_SPECS = [("cellular-edge", 0.015, 0.95, 100e6, 0.5), ("d2d-neighbour", 0.005, 0.8, 20e6, 0.0),
            ("rsu", 0.01, 0.9, 50e6, 0.1)]


def ma_scenario(security: LinkSecurity, scenario: str, requests: int) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    failures = scenario != "no failures"
    with WorkerGroup(security) as group:
        workers = group.start([(n, ["--model", "smollm2-135m", "--num-layers", "4"]) for n, *_ in MA_SPECS])
        links = [FaultyLink(w.address, latency_s=lat, drop_prob=(1 - av) if failures else 0.0, seed=i)
                 for i, (w, (_, lat, av, _, _)) in enumerate(zip(workers, MA_SPECS, strict=True))]
        paths = [AccessPath(n, lk.address, rate_bps=rate, latency_s=lat, availability=av if failures else 1.0,
                            cost_per_mb=cost) for lk, (n, lat, av, rate, cost) in zip(links, MA_SPECS, strict=True)]
        client = MultiAccessClient(paths, group.security, "fastest", timeout=10.0, cooldown_s=1.0, max_rounds=4)
        victim = workers[rank_paths(paths, "fastest", client.request_bytes)[0]]
        done = [0]

        def killer() -> None:
            while done[0] < requests // 3:
                time.sleep(0.005)
            group.kill(victim)

        if scenario.endswith("killed"):
            threading.Thread(target=killer, daemon=True).start()

        def one(i: int):
            try:
                return client.request("generate", {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": 8}, index=i)
            except AllPathsFailed as err:
                return err
            finally:
                done[0] += 1

        with ThreadPoolExecutor(1) as pool:  # one in flight: latency comparable with the model (no queueing)
            res = list(pool.map(one, range(requests)))
        client.close()
        for lk in links:
            lk.close()
    ok = [r for r in res if not isinstance(r, AllPathsFailed)]
    lat = sorted(r.seconds for r in ok)
    compute = statistics.median(float(r.reply.meta["compute_s"]) for r in ok)  # measured on the nodes
    sim = simulate_multiaccess(paths, "fastest", 10_000, client.request_bytes, compute_s=compute, detect_s=0.01)
    return [scenario, f"{len(ok)}/{len(res)}", str(sum(r.retried for r in ok)),
            f"{statistics.mean(lat) * 1e3:.1f}", f"{lat[int(0.95 * (len(lat) - 1))] * 1e3:.1f}",
            f"{sim.success_rate:.2%}", f"{sim.mean_s * 1e3:.1f}"]


def bench_multiaccess(security: LinkSecurity, requests: int) -> None:
    rows = [ma_scenario(security, sc, requests) for sc in ("no failures", "drops (1 - availability)", "drops + node killed")]
    table(f"multi-access, policy fastest, {requests} requests (8 tokens, SmolLM2 4 layers), one in flight; a relay per path adds its latency",
          ["scenario", "answered", "retried", "mean ms", "p95 ms", "simulated success", "simulated mean ms"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repetitions")
    ap.add_argument("--only", action="append", choices=["transport", "split", "vertical", "multiaccess"],
                    help="run only this part (repeat for several; default: all)")
    args = ap.parse_args()
    only = set(args.only or ["transport", "split", "vertical", "multiaccess"])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    security = LinkSecurity.fresh(tempfile.mkdtemp(prefix="fedintel-bench-tls-"))  # one CA for every device here
    t0 = time.time()
    if "transport" in only:
        bench_transport(security, 200 if args.quick else 500)
    if "split" in only:
        bench_split(security, 16 if args.quick else 32, 2 if args.quick else 4)
    if "vertical" in only:
        bench_vertical(security, 16 if args.quick else 24, [] if args.quick else [20])
    if "multiaccess" in only:
        bench_multiaccess(security, 18 if args.quick else 30)
    console.print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
