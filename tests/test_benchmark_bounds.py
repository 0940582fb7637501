"""The bounds the benchmarks report: the ragged bound (benchmarks/greater_step.py) and the bytes a decode
step reads (benchmarks/engine.py)."""

import pytest

from benchmarks.engine import ragged_bound_tokens_per_s, weight_bytes


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


@pytest.mark.parametrize("tied", [True, False])
def test_a_decode_step_reads_every_weight_but_an_untied_input_embedding(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    every = sum(p.numel() * 4 for p in model.parameters())  # a tied embedding is one parameter
    embedding = 100 * 16 * 4
    assert weight_bytes(model) == (every if tied else every - embedding)
