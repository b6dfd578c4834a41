"""NetworkConfig: paper defaults, and errors that name the field and say why."""

import pytest
from pydantic import ValidationError

from fedintel.network.config import NetworkConfig


def test_defaults_are_the_papers_setup():
    cfg = NetworkConfig()
    assert cfg.cell_radius_m == 100.0
    assert cfg.bandwidth_hz == 20e6
    assert cfg.tx_power_dbm == 23.0
    assert cfg.noise_dbm == -80.0
    assert cfg.path_loss.intercept_db == 128.1 and cfg.path_loss.slope_db == 37.6
    # -80 dBm = 1e-11 W spread over 20 MHz
    assert cfg.noise_psd_w_hz == pytest.approx(1e-11 / 20e6, rel=1e-12)


def test_psd_alternative_wins_when_set_alone():
    cfg = NetworkConfig(noise_psd_dbm_hz=-174.0)
    assert cfg.noise_psd_w_hz == pytest.approx(10 ** ((-174.0 - 30.0) / 10.0), rel=1e-12)


def _error(**kwargs) -> str:
    with pytest.raises(ValidationError) as info:
        NetworkConfig.model_validate(kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"bandwidth_hz": 0}, ["bandwidth_hz", "> 0"]),
        ({"bandwidth_hz": -5e6}, ["bandwidth_hz", "> 0"]),
        ({"tx_power_dbm": 75.0}, ["tx_power_dbm", "dBm"]),
        ({"bs_tx_power_dbm": 200.0}, ["bs_tx_power_dbm", "dBm"]),
        ({"devices": {"power_w": -1.0}}, ["power_w", "watts", "> 0"]),
        ({"devices": {"profiles": [{"flops_per_s": 1e9, "memory_bytes": 1, "power_w": -2}]}}, ["power_w"]),
        ({"devices": {"distribution": "uniform", "spread": 1.5}}, ["network.devices.spread", "< 1"]),
        ({"selection": "deadline"}, ["network.deadline_s", "deadline"]),
        ({"min_distance_m": 200.0}, ["network.min_distance_m", "cell_radius_m"]),
        ({"noise_dbm": -80.0, "noise_psd_dbm_hz": -174.0}, ["only one", "noise_dbm", "noise_psd_dbm_hz"]),
        ({"noise_dbm": None}, ["noise_dbm", "noise_psd_dbm_hz"]),
        ({"cell_radius_m": 0}, ["cell_radius_m", "greater than 0"]),
        ({"bandwith_hz": 1e6}, ["bandwith_hz", "Extra inputs are not permitted"]),
        ({"allocation": "greedy"}, ["allocation", "min_max_latency"]),
    ],
)
def test_bad_values_name_the_field(kwargs, fragments):
    msg = _error(**kwargs)
    for f in fragments:
        assert f in msg, (f, msg)


def test_negative_dbm_is_a_valid_power():
    cfg = NetworkConfig(tx_power_dbm=-10.0)
    assert cfg.tx_power_dbm == -10.0


def test_deadline_selection_with_deadline_is_fine():
    cfg = NetworkConfig(selection="deadline", deadline_s=30.0)
    assert cfg.deadline_s == 30.0
