"""Verdicts that survive seed noise: paired tests across seeds, effect sizes, three outcomes."""

import math

import numpy as np
import pytest
from scipy import stats

from fedintel.reproduce.verdicts import combine, compare


def test_a_consistent_gain_holds_with_its_paired_test():
    fl = np.array([3.92, 3.95, 3.90, 3.93, 3.91])
    cfl = np.array([3.70, 3.74, 3.69, 3.72, 3.71])
    c = compare(fl, cfl)
    assert c.verdict == "holds" and c.wins == 5
    assert c.p_value == pytest.approx(stats.ttest_rel(fl, cfl).pvalue)
    diff = fl - cfl
    assert c.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))


def test_an_ordering_inside_seed_noise_is_inconclusive():
    # Fig. 5a as first reported: LoRA 3.22 +- 0.39 against Prompt 3.70 +- 0.65 over three seeds
    lora, prompt = np.array([2.80, 3.30, 3.56]), np.array([3.00, 4.45, 3.65])
    c = compare(prompt, lora)
    assert c.wins == 3 and c.p_value > 0.05 and c.verdict == "inconclusive"


def test_a_significant_opposite_ordering_does_not_hold_and_higher_is_better_flips():
    acc_fl, acc_cfl = np.array([0.80, 0.82, 0.79, 0.81]), np.array([0.70, 0.71, 0.69, 0.72])
    assert compare(acc_fl, acc_cfl, lower_is_better=False).verdict == "does not hold"
    assert compare(acc_cfl, acc_fl, lower_is_better=False).verdict == "holds"


def test_combined_claims_and_degenerate_cases():
    same = compare(np.array([1.0, 2.0]), np.array([0.5, 1.5]))  # identical gains: d is infinite, p is 0
    assert same.verdict == "holds" and math.isinf(same.effect_size)
    one_seed = compare(np.array([1.0]), np.array([0.5]))
    assert one_seed.verdict == "inconclusive" and one_seed.describe() == "1/1 seeds, paired t-test p = n/a, d = n/a"
    assert combine([same, same]) == "holds"
    assert combine([same, one_seed]) == "inconclusive"
    with pytest.raises(ValueError, match="one value per seed"):
        compare(np.array([1.0, 2.0]), np.array([1.0]))
