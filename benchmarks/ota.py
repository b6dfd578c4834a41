"""Over-the-air aggregation (BAA) against digital FedAvg on the simulated cell: aggregation error and upload time.

Pure simulation, no training: each participant holds a LoRA-sized update (SmolLM2-135M, r=8 on q/v: 460,800
values) drawn as a shared direction plus a client-specific one, with lognormal norms, so clients disagree as
non-IID clients do. For every cell radius and transmit power (the paper's cell otherwise: 20 MHz, -80 dBm of
noise, 8 dB shadowing, Rayleigh fading, users dropped uniformly), over seeds (positions, fades, updates):

* over the air: ``aggregation.rule: ota`` with its defaults (truncation below 0 dB full-power SNR, channel
  inversion under the average power constraint) summed through the cell's channel by the real aggregator;
  upload time from the network clock (one analog slot, ``entries / bandwidth``);
* digital FedAvg: the exact mean of the updates that arrive, upload time from the same clock (FDMA with equal
  shares, the network's default, and with ``min_max_latency``; Shannon rates; clients below ``min_rate_bps``
  are dropped as outages). The round waits for its slowest client, so times are medians over seeds.

Error: normalised MSE ``||estimate - mean_all||^2 / ||mean_all||^2`` against the exact mean over every
participant (truncated or dropped clients count as error). Compute and download are left out (0 FLOPs, no
download), so the round time is the upload time.

    python benchmarks/ota.py [--clients 16] [--seeds 8] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _common
import numpy as np
import torch

from fedintel.aggregation.base import RoundContext
from fedintel.aggregation.ota import OTAConfig, OverTheAir
from fedintel.network.config import NetworkConfig
from fedintel.network.simulator import ClientJob, WirelessNetwork
from fedintel.types import Update

LORA_ENTRIES = 460_800  # SmolLM2-135M, LoRA r=8 on q_proj/v_proj: 30 x (8 x 576 x 2 + 8 x 576 + 192 x 8)
RADII_M = (50.0, 100.0, 250.0, 500.0)
POWERS_DBM = (0.0, 10.0, 20.0)
DOCS_PNG = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "ota.png"


def updates(num: int, entries: int, seed: int) -> tuple[list[Update], np.ndarray]:
    """``num`` client deltas (shared + own direction, lognormal norms) and their exact mean."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(entries)
    deltas = []
    for _ in range(num):
        own = rng.standard_normal(entries)
        deltas.append(1e-3 * np.exp(0.5 * rng.standard_normal()) * (shared + own) / np.sqrt(2.0))
    ups = [Update(client_id=c, delta={"lora": torch.from_numpy(d.astype(np.float32))}, num_samples=1, base_version=0,
                  train_loss=1.0, steps=1, tokens=1) for c, d in enumerate(deltas)]
    return ups, np.mean([u.delta["lora"].double().numpy() for u in ups], axis=0)


def nmse(estimate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.sum((estimate - exact) ** 2) / np.sum(exact**2))


def mean_of(ups: list[Update], ids: set[int], like: np.ndarray) -> np.ndarray:
    chosen = [u.delta["lora"].double().numpy() for u in ups if u.client_id in ids]
    return np.mean(chosen, axis=0) if chosen else np.zeros_like(like)


def measure(radius: float, power: float, ups: list[Update], exact: np.ndarray, seed: int,
            ota_cfg: OTAConfig | None = None) -> dict[str, float]:
    """One round on a fresh cell: over the air (``ota_cfg``, default the rule's defaults) and digital FedAvg."""
    net = WirelessNetwork(NetworkConfig(cell_radius_m=radius, tx_power_dbm=power), len(ups), seed=seed)
    entries = ups[0].delta["lora"].numel()
    jobs = [ClientJob(u.client_id, 0.0, u.nbytes, 0, entries) for u in ups]
    ota_cfg = ota_cfg or OTAConfig(weighted=False)
    agg = OverTheAir.from_config(ota_cfg, seed)
    analog = net.simulate_round(1, 0.0, jobs, analog=ota_cfg.analog_uplink())
    est = agg.aggregate(ups, {}, RoundContext(1, channel=net.channel(1)))["lora"].double().numpy()
    sent = set(agg.last_transmitting)
    digital = net.simulate_round(1, 0.0, jobs)
    minmax = WirelessNetwork(NetworkConfig(cell_radius_m=radius, tx_power_dbm=power, allocation="min_max_latency"),
                             len(ups), seed=seed).simulate_round(1, 0.0, jobs)
    return {
        "ota_nmse": nmse(est, exact),
        "ota_noise_nmse": nmse(est, mean_of(ups, sent, exact)) if sent else float("nan"),
        "ota_truncated": agg.last_info["ota_truncated"] / len(ups),
        "ota_upload_s": analog.duration_s,
        "ota_max_power_w": agg.last_info["ota_max_tx_power_w"],
        "digital_nmse": nmse(mean_of(ups, set(digital.accepted), exact), exact),
        "digital_dropped": len(digital.dropped) / len(ups),
        "digital_upload_s": digital.duration_s,
        "minmax_upload_s": minmax.duration_s,
    }


def averaged(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over seeds; times as medians (the digital round waits for its slowest client, a heavy tail)."""
    out = {}
    for m in rows[0]:
        values = np.array([r[m] for r in rows])
        if not np.isfinite(values).any():
            out[m] = float("nan")
        else:
            out[m] = float(np.nanmedian(values) if m.endswith("_s") else np.nanmean(values))
    return out


def sweep(args: argparse.Namespace) -> tuple[dict[tuple[float, float], dict[str, float]], dict[str, dict[str, float]]]:
    """Radius x power with the rule's defaults, and the truncation / power-control policies at 250 m, 10 dBm."""
    grid: dict[tuple[float, float], list[dict[str, float]]] = {}
    policies: dict[str, list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        ups, exact = updates(args.clients, args.entries, seed)
        for radius in RADII_M:
            for power in POWERS_DBM:
                grid.setdefault((radius, power), []).append(measure(radius, power, ups, exact, seed))
        for label, knobs in POLICIES.items():
            cfg = OTAConfig(weighted=False, **knobs)
            policies.setdefault(label, []).append(measure(250.0, 10.0, ups, exact, seed, cfg))
    return {k: averaged(v) for k, v in grid.items()}, {k: averaged(v) for k, v in policies.items()}


POLICIES: dict[str, dict[str, object]] = {
    "no truncation": {"truncation": "none"},
    "truncate below -10 dB SNR": {"min_snr_db": -10.0},
    "truncate below 0 dB SNR (default)": {},
    "truncate below 10 dB SNR": {"min_snr_db": 10.0},
    "truncate the weakest 50 %": {"truncation": "fraction", "truncation_fraction": 0.5},
    "0 dB, peak power constraint": {"power_constraint": "peak"},
    "0 dB, no power control (phase only)": {"power_control": "none"},
}


def plot(res: dict[tuple[float, float], dict[str, float]], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = dict(zip(POWERS_DBM, ("tab:red", "tab:orange", "tab:green"), strict=True))
    ota, noise, digital, minmax = ("o", "-"), ("o", ":"), ("s", "--"), ("^", ":")
    for p in POWERS_DBM:
        c = colors[p]
        ax_err.plot(RADII_M, [res[(r, p)]["ota_nmse"] for r in RADII_M], marker=ota[0], ls=ota[1], color=c)
        ax_err.plot(RADII_M, [res[(r, p)]["ota_noise_nmse"] for r in RADII_M], marker=noise[0], ls=noise[1], color=c,
                    alpha=0.6)
        ax_err.plot(RADII_M, [res[(r, p)]["digital_nmse"] for r in RADII_M], marker=digital[0], ls=digital[1], color=c,
                    alpha=0.6)
        ax_time.plot(RADII_M, [res[(r, p)]["digital_upload_s"] for r in RADII_M], marker=digital[0], ls=digital[1],
                     color=c)
        ax_time.plot(RADII_M, [res[(r, p)]["minmax_upload_s"] for r in RADII_M], marker=minmax[0], ls=minmax[1],
                     color=c)
        ax_time.plot(RADII_M, [res[(r, p)]["ota_upload_s"] for r in RADII_M], marker=ota[0], ls=ota[1], color=c)
    ax_err.set(xscale="log", xlabel="cell radius (m)", ylabel="NMSE vs exact mean of all clients",
               title="aggregation error (mean over seeds)")
    ax_err.set_yscale("symlog", linthresh=1e-3)  # digital FedAvg is exact (0) unless a client is in outage
    ax_err.set_ylim(0.0, 1.5)
    ax_time.set(xscale="log", yscale="log", xlabel="cell radius (m)", ylabel="upload time per round (s)",
                title=f"upload time (median over seeds), {args.clients} clients x {args.entries:,} values")
    powers = [Line2D([], [], color=colors[p], lw=6, label=f"{p:g} dBm") for p in POWERS_DBM]

    def style(spec: tuple[str, str], label: str) -> Line2D:
        return Line2D([], [], color="0.3", marker=spec[0], ls=spec[1], label=label)

    ax_err.legend(handles=[*powers, style(ota, "over the air"), style(noise, "over the air, noise only"),
                           style(digital, "digital FedAvg (outages)")], fontsize=7, loc="lower right")
    ax_time.legend(handles=[*powers, style(digital, "digital, equal shares"), style(minmax, "digital, min_max_latency"),
                            style(ota, "over the air: one slot")], fontsize=7, loc="center right")
    for ax in (ax_err, ax_time):
        ax.set_xticks(RADII_M, [f"{r:g}" for r in RADII_M])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--entries", type=int, default=LORA_ENTRIES, help="values per update (default: SmolLM2 LoRA r=8)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 20k values")
    ap.add_argument("--docs", action="store_true", help=f"also copy the plot to {DOCS_PNG}")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.entries = 2, 20_000
    res, policies = sweep(args)
    rows = []
    for (radius, power), m in sorted(res.items()):
        rows.append([f"{radius:g}", f"{power:g}", f"{100 * m['ota_truncated']:.0f} %", f"{m['ota_nmse']:.3g}",
                     f"{m['ota_noise_nmse']:.3g}", f"{100 * m['digital_dropped']:.0f} %", f"{m['digital_nmse']:.3g}",
                     f"{1e3 * m['ota_upload_s']:.1f}", f"{m['digital_upload_s']:.3g}", f"{m['minmax_upload_s']:.3g}",
                     f"{m['minmax_upload_s'] / m['ota_upload_s']:.0f}x" if m["ota_upload_s"] > 0 else "-"])
    print(f"{args.clients} clients, {args.entries:,} values per update, 20 MHz, -80 dBm noise, mean over "
          f"{args.seeds} seeds\n")
    print(_common.table(["radius (m)", "tx power (dBm)", "OTA truncated", "OTA NMSE", "OTA noise-only NMSE",
                         "digital dropped", "digital NMSE", "OTA upload (ms)", "digital upload, equal (s)",
                         "digital upload, min_max_latency (s)", "min_max_latency / OTA"], rows))
    print("\nTruncation and power control at 250 m, 10 dBm\n")
    print(_common.table(["policy", "truncated", "NMSE", "noise-only NMSE", "largest transmit power (dBm)"], [
        [label, f"{100 * m['ota_truncated']:.0f} %", f"{m['ota_nmse']:.3g}", f"{m['ota_noise_nmse']:.3g}",
         f"{10 * np.log10(m['ota_max_power_w']) + 30:.1f}" if m["ota_max_power_w"] > 0 else "-"]
        for label, m in policies.items()]))
    out = _common.OUT / "ota" / "ota.png"
    plot(res, out, args)
    print(f"\nplot: {out}")
    if args.docs:
        DOCS_PNG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, DOCS_PNG)


if __name__ == "__main__":
    main()
