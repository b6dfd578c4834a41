"""Fault campaign (issue #16 item 7): kill the server with SIGKILL at random points, resume, compare.

For each scheme (fedavg, clustered, hierarchical, async, fedavg with central DP, fedavg with secure
aggregation) a tiny-llama run is started with ``fedintel run`` in a subprocess and killed with SIGKILL at
random points (seeded), ``--kills`` times; after each kill it is continued with ``fedintel resume`` (or
``fedintel run`` again if it died before creating its metrics store). A kill point is: wait until the run has
written 0 or 1 more checkpoints (random), then a random fraction of a second more, so kills land in start-up,
in training, in aggregation and around checkpoint writes. After the last kill the run is resumed to the end
and compared with an uninterrupted run of the same config: every round's metrics, every client row, every
event, the final scheme state with its adapters (bit for bit). Updates *lost*: per round, updates merged in
the uninterrupted run (``clients_accepted``; for async every accepted arrival) missing from the resumed run;
*applied twice*: merged beyond the uninterrupted run's count, or a client row recorded twice.

Then (unless ``--no-flower``) one Flower run on a SuperLink and 3 SuperNodes (processes on 127.0.0.1): a
SuperNode is SIGKILLed (its whole process tree) when it receives its train job of a random round; the run
must finish, the killed node's client must be recorded as failed from that round on, and no update may be
applied twice.

    python benchmarks/faults.py             # 6 schemes x 20 kills + the Flower run (~15 min on 2 busy cores)
    python benchmarks/faults.py --quick     # 2 kills per scheme
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import _common  # noqa: F401  (offline environment)
import torch

from fedintel.config import dump_config, parse_config
from fedintel.experiment import run_experiment
from fedintel.tracking.checkpoint import latest_checkpoint, list_checkpoints

_common_table = _common.table

BASE = {
    "name": "faults",
    "model": {"name": "tiny-llama"},
    "data": {"dataset": "chatterbot", "max_length": 32, "samples_per_client": 16, "global_eval_samples": 16},
    "federation": {"rounds": 6, "num_clients": 4, "clients_per_round": 3, "local_steps": 2, "batch_size": 4,
                   "micro_batch_size": 2, "lr": 0.01, "seed": 0},
    "eval": {"max_samples": 8, "per_client": False},
    "runtime": {"threads": 1},
}
TWO_DOMAINS = ["tech_support", "trivia"]
SCHEMES: dict[str, dict] = {
    "fedavg": {},
    "clustered": {"federation": {"scheme": "clustered"}, "clustering": {"method": "given", "num_clusters": 2},
                  "data": {"domains": TWO_DOMAINS, "partition": {"method": "by_domain"}}},
    "hierarchical": {"federation": {"scheme": "hierarchical"},
                     "hierarchy": {"tiers": [{"nodes": 2, "period": 1}], "cloud_period": 2}},
    "async (fedbuff)": {"federation": {"scheme": "async"}, "async": {"mode": "fedbuff", "buffer_size": 2}},
    "fedavg + central DP": {"privacy": {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 0.5}},
    "fedavg + secure aggregation": {"privacy": {"secure_aggregation": True}},
}
Q_ROUNDS = "SELECT round, name, value FROM round_metrics WHERE name != 'wall_s' ORDER BY round, name"
Q_CLIENTS = "SELECT round, client_id, name, value FROM client_metrics ORDER BY round, client_id, name"
Q_EVENTS = "SELECT round, client_id, kind, message FROM events ORDER BY round, client_id, kind, message"
Q_APPLIED = "SELECT round, value FROM round_metrics WHERE name = 'clients_accepted'"
Q_DUPLICATES = ("SELECT COUNT(*) FROM (SELECT 1 FROM client_metrics GROUP BY run_id, round, client_id, name "
                "HAVING COUNT(*) > 1)")
Q_ACCEPTED = "SELECT round, client_id FROM client_metrics WHERE name = 'accepted' AND value = 1.0"


def config(name: str, out: Path, rounds: int | None = None):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in SCHEMES[name].items():
        raw[key] = {**raw.get(key, {}), **value}
    if rounds is not None:
        raw["federation"]["rounds"] = rounds
    raw["output"] = {"dir": str(out), "save_adapter": False}
    return parse_config(raw)


def rows(run_dir: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(run_dir / "metrics.db")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def same_state(a: object, b: object) -> bool:
    """Bit-identical scheme states (tensors, nested dicts and lists, plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def fedintel(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedintel.cli", *args, "-q"]


def campaign(name: str, kills: int, rng: random.Random, root: Path) -> dict:
    """Kill one run ``kills`` times, resume it to the end, compare it with the uninterrupted run."""
    cfg = config(name, root)
    root.mkdir(parents=True, exist_ok=True)
    run_dir, cfg_path = root / "killed", root / "exp.yaml"
    cfg_path.write_text(dump_config(cfg))
    done = 0
    t0 = time.monotonic()
    while done < kills:
        started = (run_dir / "metrics.db").exists()
        cmd = fedintel("resume", str(run_dir)) if started else fedintel("run", str(cfg_path), "--run-dir", str(run_dir))
        have = len(list_checkpoints(run_dir)) if run_dir.exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        more, delay = rng.choice([0, 0, 1]), rng.uniform(0.0, 1.5)
        end = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < end:
            n = len(list_checkpoints(run_dir)) if (run_dir / "checkpoints").exists() else 0
            if n >= have + more:
                break
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is not None:  # it finished first: the campaign for this scheme is over
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done += 1
    final = subprocess.run(fedintel("resume", str(run_dir)) if (run_dir / "metrics.db").exists()
                           else fedintel("run", str(cfg_path), "--run-dir", str(run_dir)),
                           capture_output=True, text=True)
    killed_s = time.monotonic() - t0
    if final.returncode != 0:
        raise RuntimeError(f"{name}: the final resume failed:\n{final.stdout[-2000:]}{final.stderr[-2000:]}")
    full = run_experiment(cfg, root / "full")
    same = all(rows(run_dir, q) == rows(full.run_dir, q) for q in (Q_ROUNDS, Q_CLIENTS, Q_EVENTS))
    a, b = latest_checkpoint(run_dir), latest_checkpoint(full.run_dir)
    same = same and a["round"] == b["round"] == cfg.federation.rounds and same_state(a["state"], b["state"])
    # updates merged into the global model per round (for async: every accepted arrival)
    got = Counter({r: int(v) for r, v in rows(run_dir, Q_APPLIED)})
    ref = Counter({r: int(v) for r, v in rows(full.run_dir, Q_APPLIED)})
    lost = sum((ref - got).values())
    twice = sum((got - ref).values()) + rows(run_dir, Q_DUPLICATES)[0][0] + sum(
        c - 1 for c in Counter(rows(run_dir, Q_ACCEPTED)).values() if c > 1)
    return {"scheme": name, "kills": done, "rounds": cfg.federation.rounds, "identical": same, "lost": lost,
            "twice": twice, "updates": sum(ref.values()), "seconds": killed_s}


def flower_node_kill(rng: random.Random, root: Path) -> dict:
    """A SuperNode SIGKILLed when it receives its train job of a random round; the run must go on."""
    from fedintel.engines.flower.deploy import LocalCluster
    from fedintel.engines.flower.shards import write_shards

    rounds = 3
    cfg = config("fedavg", root, rounds=rounds)
    cfg = parse_config({**cfg.model_dump(mode="json"), "federation": {**cfg.federation.model_dump(mode="json"),
                                                                      "num_clients": 3, "clients_per_round": 3}})
    root.mkdir(parents=True, exist_ok=True)
    kill_round = rng.randint(1, rounds)
    shards = write_shards(cfg, root / "shards")
    killed = threading.Event()
    with LocalCluster(root / "cluster") as cl:
        cl.start_superlink()
        for i in range(3):
            cl.start_supernode(f"node{i}", shards, [i], warm=True)
        victim = cl.procs["node2"]

        def kill() -> None:
            end = time.monotonic() + 400
            while time.monotonic() < end:
                text = victim.log_path.read_text(errors="replace") if victim.log_path.is_file() else ""
                if text.count("Receiving: train message") >= kill_round:
                    time.sleep(rng.uniform(0.0, 1.0))  # somewhere in its training
                    cl.kill_node("node2")
                    killed.set()
                    return
                time.sleep(0.05)

        threading.Thread(target=kill, daemon=True).start()
        res = cl.run(cfg, root / "run", job_timeout=30.0, discovery_timeout=120, timeout=600)
    events = rows(root / "run", "SELECT round, client_id, kind FROM events WHERE kind = 'failed' ORDER BY round")
    accepted = Counter(rows(root / "run", Q_ACCEPTED))
    status = rows(root / "run", "SELECT status FROM runs")[0][0] if res.returncode == 0 else "error"
    expected_failed = [(r, 2, "failed") for r in range(kill_round, rounds + 1)]
    return {"kill_round": kill_round, "killed": killed.is_set(), "status": status,
            "failed_recorded": events == expected_failed, "twice": sum(c - 1 for c in accepted.values() if c > 1),
            "accepted": [sum(1 for (r, _), c in accepted.items() if r == k) for k in range(1, rounds + 1)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per scheme (default 20)")
    p.add_argument("--quick", action="store_true", help="2 kills per scheme")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--only", nargs="*", default=None, help="schemes to run (names as in the table)")
    p.add_argument("--no-flower", action="store_true", help="skip the SuperNode kill run")
    args = p.parse_args()
    kills = 2 if args.quick else args.kills
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedintel-faults-") as tmp:
        for i, name in enumerate(SCHEMES):
            if args.only and name not in args.only:
                continue
            r = campaign(name, kills, rng, Path(tmp) / f"s{i}")
            print(f"{name}: {r}", flush=True)
            results.append(r)
        flower = None if args.no_flower else flower_node_kill(rng, Path(tmp) / "flower")
    print()
    print(_common_table(
        ["scheme", "kills", "runs", "identical finals", "updates (rounds)", "updates lost", "applied twice"],
        [[r["scheme"], r["kills"], 1, "yes" if r["identical"] else "NO", f"{r['updates']} ({r['rounds']})",
          r["lost"], r["twice"]] for r in results]))
    total = sum(r["kills"] for r in results)
    print(f"\n{total} kills in {len(results)} runs; identical finals {sum(r['identical'] for r in results)}/"
          f"{len(results)}; updates lost {sum(r['lost'] for r in results)}, applied twice "
          f"{sum(r['twice'] for r in results)}; seed {args.seed}; {time.monotonic() - t0:.0f} s")
    if flower is not None:
        print(f"Flower: SuperNode node2 killed in round {flower['kill_round']} (killed={flower['killed']}); "
              f"run {flower['status']}; client 2 failed in every round from then on: {flower['failed_recorded']}; "
              f"accepted per round {flower['accepted']}; applied twice {flower['twice']}")
    ok = all(r["identical"] and r["lost"] == 0 and r["twice"] == 0 for r in results) and (
        flower is None or (flower["killed"] and flower["status"] == "finished" and flower["failed_recorded"]
                           and flower["twice"] == 0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
