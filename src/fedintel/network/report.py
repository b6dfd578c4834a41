"""Flatten a round's timing into the numbers the metrics store records."""

from __future__ import annotations

from fedintel.network.simulator import RoundTiming


def summarize_round(rt: RoundTiming) -> dict[str, float]:
    """Per-round totals: simulated durations (s), bytes moved, energy (J), and drop counts.

    ``bytes_up`` counts only delivered uploads; ``bytes_down`` every download that was sent.
    """
    served = [t for t in rt.clients.values() if not t.dropped]
    return {
        "sim_round_s": rt.duration_s,
        "sim_time_s": rt.end_s,
        "bytes_up": float(sum(t.bytes_up for t in rt.clients.values())),
        "bytes_down": float(sum(t.bytes_down for t in rt.clients.values())),
        "energy_tx_j": float(sum(t.energy_tx_j for t in rt.clients.values())),
        "energy_compute_j": float(sum(t.energy_compute_j for t in rt.clients.values())),
        "dropped": float(len(rt.dropped)),
        "dropped_outage": float(sum(t.reason == "outage" for t in rt.clients.values())),
        "dropped_deadline": float(sum(t.reason == "deadline" for t in rt.clients.values())),
        "max_compute_s": max((t.compute_s for t in served), default=0.0),
        "max_upload_s": max((t.upload_s for t in served), default=0.0),
        "mean_rate_up_bps": sum(t.rate_up_bps for t in served) / len(served) if served else 0.0,
    }
