"""The ragged bound that benchmarks/greater_step.py reports next to the rollouts' speed."""

import pytest

from benchmarks.engine import ragged_bound_tokens_per_s


def test_decode_steps_run_only_the_rows_still_generating():
    # The prefill gives every row its first token; then one step with the 3-token row, one more.
    assert ragged_bound_tokens_per_s([3, 1, 1], {1: 1.0, 4: 2.0}) == pytest.approx(5 / 2.0)


def test_step_cost_is_interpolated_between_measured_batch_sizes():
    # One decode step with 3 rows: a third of the way from batch 4 down to batch 1 -> 1 + 2/3 s.
    assert ragged_bound_tokens_per_s([2, 2, 2], {1: 1.0, 4: 2.0}) == pytest.approx(6 / (1 + 2 / 3))


def test_batches_beyond_the_largest_measured_scale_linearly():
    assert ragged_bound_tokens_per_s([2] * 8, {1: 1.0, 4: 2.0}) == pytest.approx(16 / 4.0)


def test_no_decode_steps_means_no_bound():
    assert ragged_bound_tokens_per_s([1, 1], {1: 1.0}) == 0.0
    assert ragged_bound_tokens_per_s([], {1: 1.0}) == 0.0
