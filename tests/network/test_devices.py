"""Device profiles: compute time and energy by hand, heterogeneity, determinism, memory check."""

import numpy as np
import pytest

from fedintel.network.config import DeviceDistribution, DeviceProfileSpec
from fedintel.network.devices import DeviceProfile, check_memory, sample_profiles


def test_compute_time_and_energy_by_hand():
    p = DeviceProfile(flops_per_s=50e9, memory_bytes=6_000_000_000, power_w=5.0)
    assert p.compute_time(1e12) == pytest.approx(20.0)  # 1 TFLOP at 50 GFLOP/s
    assert p.compute_energy(1e12) == pytest.approx(100.0)  # 5 W x 20 s
    q = DeviceProfile(flops_per_s=50e9, memory_bytes=1, power_w=5.0, energy_per_flop_j=2e-11)
    assert q.compute_energy(1e12) == pytest.approx(20.0)  # 1e12 x 2e-11 J
    assert q.energy_for_time(1.0) == pytest.approx(50e9 * 2e-11)
    with pytest.raises(ValueError, match="flops"):
        p.compute_time(-1.0)


def test_fixed_distribution_is_homogeneous():
    profs = sample_profiles(DeviceDistribution(distribution="fixed", mean_flops=1e10), 5, seed=0)
    assert [p.flops_per_s for p in profs] == [1e10] * 5


def test_lognormal_has_the_configured_mean_and_stragglers():
    dist = DeviceDistribution(distribution="lognormal", mean_flops=50e9, spread=0.5)
    flops = np.array([p.flops_per_s for p in sample_profiles(dist, 4000, seed=3)])
    assert flops.mean() == pytest.approx(50e9, rel=0.03)
    assert np.log(flops).std() == pytest.approx(0.5, rel=0.05)
    assert flops.min() < 0.4 * 50e9  # stragglers exist


def test_uniform_stays_in_its_band():
    dist = DeviceDistribution(distribution="uniform", mean_flops=10e9, spread=0.5)
    flops = np.array([p.flops_per_s for p in sample_profiles(dist, 500, seed=0)])
    assert flops.min() >= 5e9 and flops.max() <= 15e9
    assert flops.max() - flops.min() > 8e9


def test_profiles_are_deterministic_and_independent_of_client_count():
    dist = DeviceDistribution()
    a = sample_profiles(dist, 8, seed=11)
    b = sample_profiles(dist, 12, seed=11)
    assert a == b[:8]
    assert a != sample_profiles(dist, 8, seed=12)


def test_explicit_profiles_are_cycled():
    dist = DeviceDistribution(
        profiles=[
            DeviceProfileSpec(flops_per_s=1e9, memory_bytes=2_000_000_000),
            DeviceProfileSpec(flops_per_s=4e9, memory_bytes=8_000_000_000, power_w=2.0),
        ]
    )
    profs = sample_profiles(dist, 5, seed=0)
    assert [p.flops_per_s for p in profs] == [1e9, 4e9, 1e9, 4e9, 1e9]
    assert profs[1].power_w == 2.0
    with pytest.raises(ValueError, match=r"network\.devices\.profiles\[\*\]\.memory_bytes"):
        check_memory(profs, 3_000_000_000, explicit=True)


def test_memory_check_names_the_field():
    profs = sample_profiles(DeviceDistribution(memory_bytes=1_000_000_000), 3, seed=0)
    check_memory(profs, 500_000_000)
    with pytest.raises(ValueError, match=r"network\.devices\.memory_bytes.*client 0"):
        check_memory(profs, 2_000_000_000)
