"""Integration: a short real GReaTer run on the offline SmolLM2."""

import pytest

from optimizers.base import Checkpoint, validate_result
from optimizers.greater_gradient import allowed_token_mask
from tests.conftest import optimize

pytestmark = pytest.mark.integration

OPTIONS = dict(n_train=4, steps=3, final_candidates=2)
TERMS = {"max_reasoning_tokens": 48, "n_dev": 4}


def test_real_vocabulary_filter_excludes_chat_markers(smollm2):
    mask = allowed_token_mask(smollm2.tokenizer)
    vocab = smollm2.tokenizer.get_vocab()
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert not mask[vocab[marker]]
    assert mask[smollm2.tokenizer.encode(" reasoning", add_special_tokens=False)[0]]


def test_short_run_changes_the_prompt_and_its_budget_adds_up(smollm2, tmp_path):
    result = optimize("greater", OPTIONS, model=smollm2, checkpoint=Checkpoint(tmp_path / "c.json"), terms=TERMS)
    validate_result(result)
    trajectory = result["trajectory"]
    assert len(trajectory) == 1 + OPTIONS["steps"]
    assert trajectory[-1]["prompt"] != trajectory[0]["prompt"] == result["initial_prompt"]
    budget = result["budget"]
    # Initial rollouts, then per step the evaluated candidates (new prompts only), then dev selection.
    new_prompts = {tuple(trajectory[0]["details"]["prompt_ids"])}
    assert budget["task_calls"] == trajectory[-1]["task_calls"] + TERMS["n_dev"] * len(result["selection"]["candidates"])
    assert trajectory[-1]["task_calls"] >= OPTIONS["n_train"] * len(new_prompts)
    assert budget["backward_passes"] == OPTIONS["n_train"] * OPTIONS["steps"]
    assert budget["task_model"]["completion_tokens"] > 0 and budget["forward_tokens"] > budget["backward_tokens"] > 0
    assert result["provenance"]["model"]["checksum"] == smollm2.prepared.checksum
