"""The report's statistics on fixed verdict tables with known answers."""

import math

import numpy as np
import pytest

from evaluation import stats


def verdicts(correct: int, total: int) -> list[int]:
    return [1] * correct + [0] * (total - correct)


def test_mcnemar_exact_matches_the_binomial_tail_by_hand():
    # 10 rows only the method gets right, 2 only the baseline: p = 2 * P(X <= 2 | n=12, 1/2)
    method = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 58
    baseline = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 58
    assert stats.mcnemar_exact(method, baseline) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar_exact(baseline, method) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant rows


def test_a_clear_paired_gain_has_an_interval_that_excludes_zero():
    baseline = verdicts(40, 100)
    method = [1] * 40 + [1] * 25 + [0] * 35  # right wherever the baseline is, and on 25 more rows
    difference = stats.paired_difference(method, baseline)
    assert difference.value == pytest.approx(0.25)
    assert 0 < difference.low < 0.25 < difference.high
    assert difference.test == "McNemar exact" and difference.p_value < 1e-6
    assert difference.significant


def test_a_balanced_swap_has_an_interval_that_includes_zero():
    # the same accuracy, 6 rows won and 6 lost: no evidence either way
    baseline = [1] * 6 + [0] * 6 + [1] * 30 + [0] * 58
    method = [0] * 6 + [1] * 6 + [1] * 30 + [0] * 58
    difference = stats.paired_difference(method, baseline)
    assert difference.value == 0
    assert difference.low < 0 < difference.high
    assert difference.p_value == 1.0 and not difference.significant


def test_pairing_narrows_the_interval_of_correlated_methods():
    # two methods that agree on 95 rows: the paired interval is far narrower than unpaired errors would give
    rng = np.random.default_rng(1)
    baseline = rng.integers(0, 2, 100)
    method = baseline.copy()
    method[:5] = 1 - method[:5]
    difference = stats.paired_difference(method, baseline)
    unpaired_half_width = 1.96 * math.sqrt(2 * 0.25 / 100)
    assert (difference.high - difference.low) / 2 < unpaired_half_width / 2


def test_accuracy_interval_is_close_to_the_normal_approximation_and_reproducible():
    estimate = stats.accuracy(verdicts(50, 100))
    assert estimate.value == 0.5 and estimate.n_rows == 100 and estimate.n_seeds == 1
    half_width = 1.96 * math.sqrt(0.25 / 100)
    assert estimate.low == pytest.approx(0.5 - half_width, abs=0.02)
    assert estimate.high == pytest.approx(0.5 + half_width, abs=0.02)
    assert stats.accuracy(verdicts(50, 100)) == estimate  # same generator seed, same interval
    assert stats.accuracy(verdicts(100, 100)).low == 1.0  # no variation, no width


def test_seeds_widen_the_interval_and_a_one_seed_baseline_pairs_with_every_seed():
    rows = 100
    steady = np.array([verdicts(60, rows)] * 3)
    # the same mean accuracy, but seeds that disagree: 40%, 60% and 80%
    shaky = np.array([verdicts(40, rows), verdicts(60, rows), verdicts(80, rows)])
    assert stats.accuracy(shaky).value == pytest.approx(0.6)
    steady_width = stats.accuracy(steady).high - stats.accuracy(steady).low
    shaky_width = stats.accuracy(shaky).high - stats.accuracy(shaky).low
    assert shaky_width > 1.5 * steady_width
    baseline = verdicts(60, rows)
    difference = stats.paired_difference(shaky, baseline)
    assert difference.n_seeds == 3 and difference.p_value is None
    assert difference.value == pytest.approx(0.0) and difference.low < 0 < difference.high


def test_family_average_weights_tasks_equally_and_resamples_each_task():
    big, small = verdicts(90, 100), verdicts(2, 10)
    family = stats.family_accuracy([big, small])
    assert family.value == pytest.approx((0.9 + 0.2) / 2)  # not (90 + 2) / 110
    assert family.low < family.value < family.high
    gain = stats.family_difference([([1] * 100, verdicts(50, 100)), ([1] * 10, verdicts(5, 10))])
    assert gain.value == pytest.approx(0.5) and gain.low > 0


@pytest.mark.parametrize("method, baseline", [([1, 0, 1], [1, 0]), ([[1, 0], [0, 1]], [[1, 0], [0, 1], [1, 1]])])
def test_unpaired_verdicts_are_refused(method, baseline):
    with pytest.raises(ValueError, match="same"):
        stats.paired_difference(method, baseline)
