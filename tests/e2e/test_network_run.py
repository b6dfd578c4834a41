"""The wireless network inside runs: simulated time, bytes, energy, drops, and bad network configs."""

import json
import sqlite3
import struct

import numpy as np
import pytest

from fedintel.cli import main
from fedintel.config import dump_config
from fedintel.experiment import run_experiment


def test_run_reports_time_bytes_energy_and_they_add_up(tiny_cfg, tmp_path):
    res = run_experiment(tiny_cfg(federation={"rounds": 3}), tmp_path / "net")
    rounds = res.rounds[1:]
    times = [r["sim_time_s"] for r in rounds]
    assert all(b > a for a, b in zip([0.0] + times[:-1], times, strict=True))  # the clock only moves forward
    assert all(r["sim_round_s"] > 0 and r["energy_compute_j"] > 0 and r["energy_tx_j"] > 0 for r in rounds)
    assert rounds[-1]["cum_bytes_up"] == pytest.approx(sum(r["bytes_up"] for r in rounds))
    con = sqlite3.connect(tmp_path / "net" / "metrics.db")
    per_client = con.execute(
        "SELECT SUM(value) FROM client_metrics WHERE round=1 AND name IN ('energy_tx_j','energy_compute_j')").fetchone()[0]
    assert per_client == pytest.approx(rounds[0]["energy_tx_j"] + rounds[0]["energy_compute_j"])


def test_uplink_bytes_equal_the_serialized_adapter_payload(tiny_cfg, tmp_path):
    res = run_experiment(tiny_cfg(federation={"rounds": 1}), tmp_path / "b")
    raw = (res.adapters["global"] / "adapter_model.safetensors").read_bytes()
    header = struct.unpack("<Q", raw[:8])[0]
    tensors = json.loads(raw[8 : 8 + header])
    payload = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in tensors.items() if k != "__metadata__")
    con = sqlite3.connect(tmp_path / "b" / "metrics.db")
    sent = {v for (v,) in con.execute("SELECT value FROM client_metrics WHERE round=1 AND name='bytes_up'")}
    assert sent == {float(payload)}


def test_deadline_drops_stragglers_and_reports_them(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"clients_per_round": 4},
                   network={"deadline_s": 1e-4, "devices": {"distribution": "lognormal", "spread": 1.0}})
    res = run_experiment(cfg, tmp_path / "deadline")
    assert all(r["dropped_deadline"] == 4 for r in res.rounds[1:])
    assert all(r["sim_round_s"] == pytest.approx(1e-4) for r in res.rounds[1:])
    con = sqlite3.connect(tmp_path / "deadline" / "metrics.db")
    kinds = {k for (k,) in con.execute("SELECT kind FROM events")}
    assert {"dropped", "no_updates"} <= kinds
    assert res.rounds[-1]["eval_loss"] == res.rounds[0]["eval_loss"]  # nothing arrived: the adapter is unchanged


@pytest.mark.parametrize("override, field", [
    ({"devices": {"memory_bytes": 1000}}, "network.devices.memory_bytes"),
    ({"bandwidth_hz": 0}, "network.bandwidth_hz"),
    ({"tx_power_dbm": 99}, "network.tx_power_dbm"),
])
def test_bad_network_config_is_a_clear_error(tiny_cfg, tmp_path, capsys, override, field):
    path = tmp_path / "bad.yaml"
    raw = tiny_cfg().model_dump(mode="json", by_alias=True)
    raw["network"].update(override)
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "-q", "--run-dir", str(tmp_path / "r")]) == 2
    assert field in capsys.readouterr().err


def test_more_users_than_samples_is_a_clear_error(tiny_cfg, tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text(dump_config(tiny_cfg(data={"samples_per_client": 5000})))
    assert main(["run", str(path), "-q", "--run-dir", str(tmp_path / "r")]) == 2
    assert "samples_per_client" in capsys.readouterr().err


def test_over_the_air_round_is_one_analog_slot_on_the_cell(tiny_cfg, tmp_path):
    cfg = tiny_cfg(federation={"rounds": 1, "clients_per_round": 4}, aggregation={"rule": "ota"},
                   network={"cell_radius_m": 500.0}, eval={"per_client": False})
    res = run_experiment(cfg, tmp_path / "ota")
    r = res.rounds[1]
    con = sqlite3.connect(tmp_path / "ota" / "metrics.db")
    rows = {(c, n): v for c, n, v in con.execute("SELECT client_id, name, value FROM client_metrics WHERE round=1")}
    entries = rows[(0, "bytes_up")] / 4  # float32 LoRA delta, one analog symbol per value
    slot = entries / cfg.network.bandwidth_hz
    sent = [c for c in range(4) if rows[(c, "truncated")] == 0.0]
    assert r["ota_clients"] == 4 and r["ota_transmitting"] == len(sent)  # clock and aggregator agree on who sent
    assert r["max_upload_s"] == pytest.approx(slot)
    assert all(rows[(c, "sim_upload_s")] == pytest.approx(slot) for c in sent)
    assert r["energy_tx_j"] == pytest.approx(sum(rows[(c, "tx_power_w")] for c in sent) * slot)
    # average power constraint: the participants' mean transmit power is the network's 23 dBm
    assert np.mean([rows[(c, "tx_power_w")] for c in range(4)]) == pytest.approx(10 ** (-0.7))
    assert r["sim_round_s"] == pytest.approx(max(rows[(c, "sim_download_s")] + rows[(c, "sim_compute_s")]
                                                 for c in range(4)) + slot)
    assert r["ota_noise_std"] > 0 and np.isfinite(r["eval_loss"])
