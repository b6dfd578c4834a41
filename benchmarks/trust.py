"""Trust benchmark: privacy vs utility, robust aggregation under attack, unlearning, secure-aggregation cost.

Four sections, each printed as a markdown table (and drawn into benchmarks/out/trust_*.png):

1. ``eps``: final eval loss vs epsilon of client-level central DP (DP-FedAvg) for a few noise multipliers.
2. ``robust``: final eval loss of each aggregation rule (fedavg, median, trimmed_mean, krum, norm_bound) under
   each update-level attack (none, sign_flip, scale, noise) with 25% malicious clients, and its ratio to the
   same rule without attack. ``labelflip`` (not in the default list: it needs a pretrained classifier that
   learns, all-MiniLM-L6 on VADER sentiment; the random tiny-bert never learns sentiment, so flipping its
   labels changes nothing) does the same with label flipping.
3. ``unlearn``: forgetting one client: exact (retrain from the checkpoint before its first round), approximate
   (subtract its stored updates + 2 recovery rounds) and full retraining: client steps, wall time, and the
   loss-threshold membership-inference AUC on the client's training data (0.5 = the level of unseen data).
4. ``secagg``: time per round of pairwise-masked secure aggregation vs plain FedAvg (all parties simulated in
   one process), with and without a dropped client, and a whole tiny run's round time with and without it.

    python benchmarks/trust.py [--only eps,robust,labelflip,unlearn,secagg] [--pretrained] [--rounds N]

By default the models are the tiny random ones (tiny-llama, tiny-bert): a few minutes on 2 cores, numbers
that show the mechanisms' relative effects rather than a real model's quality. ``--pretrained`` uses
SmolLM2-135M (causal LM sections) and all-MiniLM-L6 (classification): much slower (about 10-20x).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (offline environment)
import matplotlib
from _common import OUT, table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedintel.aggregation.fedavg import FedAvg  # noqa: E402
from fedintel.audit.membership import run_membership  # noqa: E402
from fedintel.config import ExperimentConfig, parse_config  # noqa: E402
from fedintel.experiment import run_experiment  # noqa: E402
from fedintel.privacy.secagg import SecAggClient, SecAggServer, default_threshold  # noqa: E402
from fedintel.tracking.checkpoint import latest_checkpoint  # noqa: E402
from fedintel.tracking.store import MetricsStore, finished_rounds  # noqa: E402
from fedintel.types import Update  # noqa: E402
from fedintel.unlearning.forget import forget_approximate, forget_exact, participation  # noqa: E402
from fedintel.world import build_world  # noqa: E402

RULES = ["fedavg", "median", "trimmed_mean", "krum", "norm_bound"]


def config(tmp: Path, pretrained: bool, classification: bool = False, **sections: Any) -> ExperimentConfig:
    """A small experiment; ``sections`` are merged into the defaults section by section."""
    if classification:
        model = {"name": "minilm-l6" if pretrained else "tiny-bert", "task": "classification"}
        data = {"dataset": "vader", "max_length": 48, "samples_per_client": 32, "global_eval_samples": 200}
    else:
        model = {"name": "smollm2-135m" if pretrained else "tiny-llama"}
        data = {"dataset": "chatterbot", "max_length": 32, "samples_per_client": 16, "global_eval_samples": 64}
    raw: dict[str, Any] = {
        "name": "trust", "threads": 2 if pretrained else 1, "model": model, "data": data,
        "federation": {"rounds": 4, "num_clients": 8, "clients_per_round": 8, "local_steps": 2, "batch_size": 4,
                       "micro_batch_size": 4, "lr": 2e-3 if pretrained else 1e-2, "seed": 0},
        "eval": {"max_samples": 200, "per_client": False},
        "output": {"dir": str(tmp), "save_adapter": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return parse_config(raw)


def _run(cfg: ExperimentConfig, run_dir: Path) -> dict[str, float]:
    """The final round's metrics, plus ``loss0``: the untrained adapter's eval loss (round 0).

    A finished run already in ``run_dir`` (``--keep DIR`` of an earlier, interrupted benchmark) is read back."""
    rounds = finished_rounds(run_dir)
    if rounds is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run: start it again
        rounds = run_experiment(cfg, run_dir).rounds
    return {**rounds[-1], "loss0": rounds[0]["eval_loss"]}


# -- 1. loss vs epsilon ----------------------------------------------------------------------------
def bench_epsilon(tmp: Path, pretrained: bool, rounds: int) -> str:
    sigmas = [None, 0.0, 0.1, 0.3, 1.0, 3.0]  # 0.0: clipping and equal weights, no noise
    fed = {"rounds": rounds, "num_clients": 32, "clients_per_round": 16}
    rows, points = [], []
    base_loss = None
    for sigma in sigmas:
        privacy = {"dp": "central", "noise_multiplier": sigma, "clip_norm": 0.5} if sigma is not None else {}
        cfg = config(tmp, pretrained, federation=fed, privacy=privacy)
        res = run_experiment(cfg, tmp / f"eps-{sigma}")
        first, final = res.rounds[0], res.final
        base_loss = base_loss if sigma is not None else final["eval_loss"]
        eps = final.get("epsilon", float("inf"))
        rows.append(["no DP" if sigma is None else sigma, round(eps, 2) if sigma else "inf",
                     f"{first['eval_loss']:.4f}", f"{final['eval_loss']:.4f}", f"{final['eval_loss'] - base_loss:+.4f}",
                     final.get("dp_clipped_fraction", float("nan"))])
        if sigma:
            points.append((eps, final["eval_loss"]))
    plot_loss_vs_epsilon(points, base_loss, OUT / "trust_loss_vs_epsilon.png")
    head = (f"Loss vs epsilon: central client-level DP (clip C = 0.5), {fed['clients_per_round']} of "
            f"{fed['num_clients']} clients per round, {rounds} rounds")
    return head + "\n\n" + table(["noise multiplier", "epsilon", "loss at round 0", "final eval loss",
                                  "vs no DP", "clipped fraction"], rows)


def plot_loss_vs_epsilon(points: list[tuple[float, float]], base_loss: float, path: Path) -> Path:
    """Final eval loss per epsilon (log axis) against the run without DP."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="DP-FedAvg")
    ax.axhline(base_loss, color="gray", ls="--", label="no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("final eval loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- 2. robust rules under attack ------------------------------------------------------------------
RULE_CFG = {
    "fedavg": {"rule": "fedavg"}, "median": {"rule": "median"}, "trimmed_mean": {"rule": "trimmed_mean"},
    "krum": {"rule": "krum"}, "norm_bound": {"rule": "norm_bound", "max_norm": 0.5},  # honest deltas: ~0.7
}
ATTACK_CFG = {
    "none": {}, "sign_flip": {"kind": "sign_flip"}, "scale": {"kind": "scale", "scale": 10.0},
    "noise": {"kind": "noise", "noise_std": 1.0}, "label_flip": {"kind": "label_flip"},
}


def _rules_vs_attacks(tmp: Path, attacks: list[str], fraction: float, make: Any, tag: str) -> tuple[dict, int]:
    n = 8
    bad = max(1, round(fraction * n))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for rule in RULES:
        agg = {**RULE_CFG[rule], **({"trim_beta": min(0.45, bad / n)} if rule == "trimmed_mean" else {}),
               **({"num_malicious": bad} if rule == "krum" else {})}
        for attack in attacks:
            atk = {**ATTACK_CFG[attack], "fraction": fraction} if attack != "none" else {}
            out[(rule, attack)] = _run(make(agg, atk), tmp / f"{tag}-{rule}-{attack}")
            print(f"  {tag} {rule:12s} {attack:10s} loss {out[(rule, attack)]['eval_loss']:.4f}", file=sys.stderr)
    return out, bad


def _robust_tables(loss: dict, attacks: list[str], metric: str = "eval_loss") -> str:
    rows = [[rule] + [f"{loss[(rule, a)][metric]:.4f}" + (f" ({loss[(rule, a)]['eval_accuracy']:.2f})"
                                                          if "eval_accuracy" in loss[(rule, a)] else "")
                      for a in attacks] for rule in RULES]
    ratios = [[rule] + [f"{loss[(rule, a)][metric] / loss[(rule, 'none')][metric]:.3f}" for a in attacks[1:]]
              for rule in RULES]
    ref = loss[("fedavg", "none")]
    gain = ref["loss0"] - ref[metric]
    kept = [[rule] + [f"{(loss[(rule, a)]['loss0'] - loss[(rule, a)][metric]) / gain:+.0%}" for a in attacks]
            for rule in RULES]
    return (table(["rule"] + attacks, rows) + "\n\nFinal loss relative to the same rule without attack\n\n"
            + table(["rule"] + attacks[1:], ratios)
            + f"\n\nShare of the loss reduction of FedAvg without attack ({ref['loss0']:.4f} -> {ref[metric]:.4f}) "
              "that each rule keeps (negative: worse than the untrained adapter)\n\n"
            + table(["rule"] + attacks, kept))


def plot_robust(loss: dict[tuple[str, str], dict[str, float]], attacks: list[str], path: Path) -> Path:
    """Bars of each rule's final eval loss per attack; the legend beside the axes (six entries would cover bars)."""
    untrained = loss[("fedavg", "none")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(RULES)
    for i, rule in enumerate(RULES):
        ax.bar([j + i * width for j in range(len(attacks))], [loss[(rule, a)]["eval_loss"] for a in attacks],
               width, label=rule)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(attacks))], attacks)
    ax.set_xlabel("attack")
    ax.set_ylabel("final eval loss")
    ax.set_ylim(min(v["eval_loss"] for v in loss.values()) - 0.01, max(v["loss0"] for v in loss.values()) + 0.01)
    ax.axhline(untrained["loss0"], color="gray", ls="--", lw=1, label="untrained")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bench_robust(tmp: Path, pretrained: bool, rounds: int, fraction: float) -> str:
    """Update-level attacks on a causal LM (the tiny models learn language statistics round after round)."""
    attacks = ["none", "sign_flip", "scale", "noise"]

    def make(agg: dict, atk: dict) -> ExperimentConfig:
        return config(tmp, pretrained, federation={"rounds": rounds}, aggregation=agg, attack=atk)

    loss, bad = _rules_vs_attacks(tmp, attacks, fraction, make, "robust")
    untrained = loss[("fedavg", "none")]  # round 0 is the same for every run
    plot_robust(loss, attacks, OUT / "trust_robust_rules.png")
    head = (f"Robust rules under attack ({'SmolLM2-135M' if pretrained else 'tiny-llama'}, causal LM): {bad} of 8 "
            f"clients malicious ({fraction:.0%}), all clients every round, {rounds} rounds; final eval loss "
            f"(FedAvg without attack: {untrained['eval_loss']:.4f}). sign_flip sends -delta, scale 10 x delta, "
            "noise N(0, 1) per coordinate instead of the delta; norm_bound clips every delta to 0.5.")
    return head + "\n\n" + _robust_tables(loss, attacks)


def bench_label_flip(tmp: Path, rounds: int, fraction: float) -> str:
    """Label flipping needs a classifier that learns: pretrained all-MiniLM-L6 on VADER sentiment (slow)."""
    attacks = ["none", "label_flip"]

    def make(agg: dict, atk: dict) -> ExperimentConfig:
        return config(tmp, True, classification=True, threads=2, data={"max_length": 32, "global_eval_samples": 128},
                      eval={"max_samples": 128}, federation={"rounds": rounds, "lr": 3e-3, "local_steps": 8,
                                                             "batch_size": 8, "micro_batch_size": 8},
                      aggregation=agg, attack=atk)

    loss, bad = _rules_vs_attacks(tmp, attacks, fraction, make, "labelflip")
    head = (f"Label flipping (all-MiniLM-L6, VADER sentiment): {bad} of 8 clients train on flipped labels, "
            f"{rounds} rounds; final eval loss (accuracy)")
    return head + "\n\n" + _robust_tables(loss, attacks)


# -- 3. unlearning ---------------------------------------------------------------------------------
def _steps(run_dir: Path) -> int:
    with MetricsStore(run_dir / "metrics.db") as store:
        return int(store.conn.execute("SELECT COALESCE(SUM(value), 0) FROM client_metrics WHERE name='steps'")
                   .fetchone()[0])


def plot_membership(auc: dict[str, float], client: int, path: Path) -> Path:
    """Membership AUC on the forgotten client's data per model (``orig``, ``full``, ``exact``, ``approx``)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["original", "full retrain", "exact", "approx"]
    ax.bar(names, [auc[k] for k in ("orig", "full", "exact", "approx")], color=["C3", "C0", "C2", "C1"])
    ax.axhline(0.5, color="gray", ls="--", label="unseen data (0.5)")
    ax.set_ylabel(f"membership AUC on client {client}'s data")
    ax.set_ylim(0.3, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bench_unlearning(tmp: Path, pretrained: bool, rounds: int) -> str:
    sections = {
        "federation": {"rounds": rounds, "num_clients": 6, "clients_per_round": 2, "local_steps": 24,
                       "batch_size": 6, "micro_batch_size": 6},
        "data": {"samples_per_client": 24, "eval_fraction": 0.25},
        "peft": {"r": 32, "alpha": 64},
        "output": {"save_client_updates": True},
    }
    cfg = config(tmp, pretrained, **sections)
    t0 = time.perf_counter()
    orig = run_experiment(cfg, tmp / "unlearn-orig")
    orig_s = time.perf_counter() - t0
    n = cfg.federation.num_clients
    part = {c: participation(orig.run_dir, c) for c in range(n)}
    # the client to forget: one in the last round (most remembered), the latest to join (cheapest to retrain)
    last = [c for c in range(n) if part[c][1] and part[c][1][-1] == rounds]
    client = max(last, key=lambda c: (part[c][0][0], -c))
    full_cfg = config(tmp, pretrained, **{**sections, "federation": {**sections["federation"], "exclude_clients": [client]}})
    t0 = time.perf_counter()
    full = run_experiment(full_cfg, tmp / "unlearn-full")
    full_s = time.perf_counter() - t0
    exact = forget_exact(orig.run_dir, client)
    approx = forget_approximate(orig.run_dir, client, recovery_rounds=2)
    world = build_world(cfg)
    mia = {name: run_membership(d, client, world) for name, d in
           [("orig", orig.run_dir), ("full", full.run_dir), ("exact", exact.run_dir), ("approx", approx.run_dir)]}
    full_steps = _steps(full.run_dir)
    a, b = (latest_checkpoint(d)["state"]["global"] for d in (exact.run_dir, full.run_dir))
    same = all(torch.equal(a[k], b[k]) for k in b)

    def row(name: str, key: str, rounds_trained: str, steps: int, wall: float, final: dict[str, float]) -> list:
        m = mia[key]
        return [name, rounds_trained, steps, f"{steps / full_steps:.2f}", round(wall, 1), f"{final['eval_loss']:.4f}",
                f"{m.auc:.3f}", f"{m.gap_z:.1f}"]

    rows = [
        row("original run (with the client)", "orig", f"1-{rounds}", _steps(orig.run_dir), orig_s, orig.final),
        row("full retraining without it", "full", f"1-{rounds}", full_steps, full_s, full.final),
        row("exact (retrain from checkpoint)", "exact", f"{exact.restart_round + 1}-{rounds}", exact.client_steps,
            exact.elapsed_s, exact.final),
        row("approximate (subtract + 2 recovery)", "approx", f"{rounds + 1}-{rounds + 2}", approx.client_steps,
            approx.elapsed_s, approx.final),
    ]
    # what exact unlearning would cost for every client of this run (from the schedule alone)
    ratios = []
    for c in range(n):
        if part[c][0]:
            first = part[c][0][0]
            with MetricsStore(orig.run_dir / "metrics.db") as store:
                after, total = store.conn.execute(
                    "SELECT SUM(CASE WHEN round >= ? THEN value ELSE 0 END), SUM(value) FROM client_metrics "
                    "WHERE name='steps' AND client_id != ?", (first, c)).fetchone()
            ratios.append(after / total)
    plot_membership({k: mia[k].auc for k in ("orig", "full", "exact", "approx")}, client,
                    OUT / "trust_unlearning_membership.png")
    head = (f"Unlearning client {client} (first round {part[client][0][0]}, aggregated in rounds "
            f"{part[client][1]}) of a {n}-client run, 2 per round, {rounds} rounds. Membership AUC: loss-threshold "
            f"attack on its {mia['orig'].members} training examples vs {mia['orig'].nonmembers} held-out ones "
            f"(unseen level 0.5 +- {mia['orig'].auc_std:.2f}); gap z: loss gap in standard errors. Exact = full "
            f"retraining adapter: {'yes (bit for bit)' if same else 'NO'}.")
    tail = (f"Exact unlearning cost over every client of this run (from the schedule): mean "
            f"{statistics.mean(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f} of full retraining.")
    return head + "\n\n" + table(["method", "rounds trained", "client steps", "cost vs full", "wall s (incl. load)",
                                  "final eval loss", "membership AUC", "gap z"], rows) + "\n\n" + tail


# -- 4. secure aggregation overhead ----------------------------------------------------------------
def _secagg_round(deltas: dict[int, dict[str, torch.Tensor]], dropped: list[int]) -> tuple[float, float, float]:
    """(setup s, client masking s per client, server unmask s) of one round, every party in this process."""
    ids = sorted(set(deltas) | set(dropped))
    t = default_threshold(len(ids))
    t0 = time.perf_counter()
    clients = {i: SecAggClient(i, 1, seed=0) for i in ids}
    keys = {i: c.public_key for i, c in clients.items()}
    bundles = [b for c in clients.values() for b in c.make_shares(ids, t).values()]
    for i, c in clients.items():
        c.receive_shares(b for b in bundles if b.holder == i)
    t1 = time.perf_counter()
    masked = [clients[i].masked_update(deltas[i], keys) for i in sorted(deltas)]
    t2 = time.perf_counter()
    reveals = [clients[m.client_id].reveal([x.client_id for x in masked], dropped) for m in masked]
    SecAggServer(1, t).unmask(masked, reveals, keys)
    t3 = time.perf_counter()
    return t1 - t0, (t2 - t1) / len(deltas), t3 - t2


def bench_secagg(tmp: Path, pretrained: bool, repeats: int = 3) -> str:
    world = build_world(config(tmp, pretrained))
    sizes = {"tiny-llama LoRA r=8": {k: v.shape for k, v in world.initial_state.items()},
             "SmolLM2-135M LoRA r=8 (q,v)": {f"l{i}.{m}.{ab}": s for i in range(30) for m, ab, s in
                                             [("q", "A", (8, 576)), ("q", "B", (576, 8)), ("v", "A", (8, 576)),
                                              ("v", "B", (192, 8))]}}
    rows = []
    gen = torch.Generator().manual_seed(0)
    for label, shapes in sizes.items():
        params = sum(torch.Size(s).numel() for s in shapes.values())
        for n in (4, 8, 16):
            deltas = {i: {k: 0.01 * torch.randn(s, generator=gen) for k, s in shapes.items()} for i in range(n)}
            updates = [Update(i, d, 10, 0, 0.0, 1, 1) for i, d in deltas.items()]
            ref = {k: torch.zeros(s) for k, s in shapes.items()}
            plain, full, drop = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                FedAvg().aggregate(updates, ref)
                plain.append(time.perf_counter() - t0)
                full.append(_secagg_round(deltas, []))
                drop.append(_secagg_round({i: d for i, d in deltas.items() if i != n - 1}, [n - 1]))
            med = [statistics.median(x[j] for x in full) for j in range(3)]
            total = sum(med[:1]) + med[1] * n + med[2]
            total_drop = statistics.median(d[0] + d[1] * (n - 1) + d[2] for d in drop)
            p = statistics.median(plain)
            rows.append([label, params, n, round(p * 1e3, 2), round(med[0] * 1e3, 1), round(med[1] * 1e3, 1),
                         round(med[2] * 1e3, 1), round(total * 1e3, 1), round(total_drop * 1e3, 1),
                         round(total / p, 1)])
    # a whole (tiny) run: round wall time with and without secure aggregation
    walls: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(2):  # interleaved, fastest round kept: the machine's load spikes affect both alike
        for secure in (False, True):
            cfg = config(tmp, pretrained, federation={"rounds": 3}, privacy={"secure_aggregation": secure})
            res = run_experiment(cfg, tmp / f"secagg-run-{secure}-{rep}")
            walls[secure] += [r["wall_s"] for r in res.rounds[1:]]
    return ("Secure aggregation overhead per round (pairwise masks + Shamir-shared seeds, 32 fractional bits; "
            "every party simulated in one process, median of 3). Masked uploads are 8 bytes per parameter "
            "(uint64 words) vs 4 for plain fp32.\n\n"
            + table(["adapter", "params", "clients", "plain FedAvg ms", "key setup + shares ms",
                     "masking ms per client", "server unmask ms", "secagg total ms", "with 1 dropout ms",
                     "x plain"], rows)
            + f"\n\nWhole round (8 clients training, evaluation included; fastest of 6 rounds): "
              f"{min(walls[False]):.2f} s plain vs {min(walls[True]):.2f} s with secure aggregation "
              f"({(min(walls[True]) / min(walls[False]) - 1) * 100:+.1f}%).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="eps,robust,unlearn,secagg",
                    help="comma-separated sections: eps, robust, labelflip (slow: a pretrained classifier), "
                    "unlearn, secagg")
    ap.add_argument("--pretrained", action="store_true", help="smollm2-135m / minilm-l6 instead of tiny models")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run (default 4)")
    ap.add_argument("--fraction", type=float, default=0.25, help="share of malicious clients (default 0.25)")
    ap.add_argument("--keep", help="keep the runs in this directory (default: a temporary one); finished runs "
                    "found there are reused, so a rerun with the same --keep resumes an interrupted benchmark")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedintel-trust-"))
    sections = args.only.split(",")
    try:
        for name in sections:
            t0 = time.perf_counter()
            if name == "eps":
                text = bench_epsilon(tmp, args.pretrained, args.rounds)
            elif name == "robust":
                text = bench_robust(tmp, args.pretrained, args.rounds, args.fraction)
            elif name == "labelflip":
                text = bench_label_flip(tmp, max(args.rounds, 8), args.fraction)
            elif name == "unlearn":
                text = bench_unlearning(tmp, args.pretrained, args.rounds)
            elif name == "secagg":
                text = bench_secagg(tmp, args.pretrained)
            else:
                raise SystemExit(f"unknown section {name!r}; choose from eps, robust, labelflip, unlearn, secagg")
            print(f"\n### {name}\n\n{text}\n\n({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
