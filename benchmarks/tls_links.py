"""Per-hop cost of mutual TLS on inference links: round trip to a device process, TLS vs plain TCP.

    .venv/bin/python benchmarks/tls_links.py [--reps 400]

Two echo devices (real processes, one torch thread each) run side by side: one behind mutual TLS (its own
certificate of a fresh CA, TLS 1.3), one in plaintext (``--insecure``, loopback). For a 1x1x576 fp32
activation (one SmolLM2 token) and a 1x128x768 fp32 activation (a 128-token prompt, hidden 768) the
script times ``reps`` request/reply round trips on each, interleaved (TLS, TCP, TLS, TCP, ...) so both see
the same machine load, and prints median and p90 and their ratio; plus the cost of opening a connection
(TCP connect, and TLS handshake with certificate checks). Target: TLS <= 1.5x plain TCP per hop.

On loopback the plain round trip is two memory copies, so the ratio is the price of AES-GCM against memcpy;
the last column adds, to both, the time the request and the reply take on a 1 Gbit/s link (modelled:
8 x frame bytes / rate each way), which is what a hop between two devices pays at least.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import _common
import torch

from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.protocol import Client, LinkSecurity

PAYLOADS = [("1x1x576 fp32", (1, 1, 576)), ("1x128x768 fp32", (1, 128, 768))]
LINK_BPS = 1e9


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(reps: int, connects: int) -> tuple[list[list[object]], list[list[object]]]:
    """Round-trip rows (payload, TLS median/p90, TCP median/p90, ratios) and connection set-up rows (ms)."""
    with tempfile.TemporaryDirectory(prefix="fedintel-tls-bench-") as d, \
            WorkerGroup(LinkSecurity.fresh(d)) as tls_group, WorkerGroup(LinkSecurity.plaintext()) as tcp_group:
        (tw,) = tls_group.start([("echo", ["--model", "tiny-llama"])])
        (pw,) = tcp_group.start([("echo", ["--model", "tiny-llama"])])
        clients = {"tls": tls_group.client(tw), "tcp": tcp_group.client(pw)}
        assert clients["tls"].channel().encrypted and not clients["tcp"].channel().encrypted
        rows = []
        for name, shape in PAYLOADS:
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
            for c in clients.values():  # warm-up
                for _ in range(20):
                    c.request("echo", {}, {"x": x})
            ts: dict[str, list[float]] = {"tls": [], "tcp": []}
            for i in range(reps):
                for mode in (("tls", "tcp") if i % 2 == 0 else ("tcp", "tls")):
                    t0 = time.perf_counter()
                    reply = clients[mode].request("echo", {}, {"x": x})
                    ts[mode].append(time.perf_counter() - t0)
                    if i == 0:
                        assert torch.equal(reply.tensors["x"], x)
            med = {m: statistics.median(v) * 1e3 for m, v in ts.items()}
            p90 = {m: pct(v, 0.9) * 1e3 for m, v in ts.items()}
            wire_ms = 2 * 8 * (x.numel() * x.element_size() + 200) / LINK_BPS * 1e3  # request + reply, ~200 B header
            rows.append([name, f"{med['tls']:.3f}", f"{p90['tls']:.3f}", f"{med['tcp']:.3f}", f"{p90['tcp']:.3f}",
                         f"{med['tls'] / med['tcp']:.2f}x", f"{p90['tls'] / p90['tcp']:.2f}x",
                         f"{(med['tls'] + wire_ms) / (med['tcp'] + wire_ms):.2f}x"])
        setup: dict[str, list[float]] = {"tls": [], "tcp": []}
        for _ in range(connects):
            for mode, (group, w) in (("tls", (tls_group, tw)), ("tcp", (tcp_group, pw))):
                c: Client = group.client(w)
                t0 = time.perf_counter()
                c.channel()
                setup[mode].append(time.perf_counter() - t0)
                c.close()
        for c in clients.values():
            c.close()
    conn = [["open a connection (connect + handshake)", f"{statistics.median(setup['tls']) * 1e3:.2f}",
             f"{statistics.median(setup['tcp']) * 1e3:.2f}"]]
    return rows, conn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=400, help="round trips per payload and mode")
    ap.add_argument("--connects", type=int, default=30, help="connections opened per mode")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows, conn = measure(args.reps, args.connects)
    print(f"round trip to an echo device process, {args.reps} interleaved requests per cell (ms)\n")
    print(_common.table(["activation", "TLS median", "TLS p90", "TCP median", "TCP p90", "TLS/TCP median",
                         "TLS/TCP p90", "TLS/TCP median + 1 Gbit/s link"], rows))
    print()
    print(_common.table(["median ms", "mutual TLS 1.3", "plain TCP"], conn))
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
