"""One contract, checked for every registered optimizer.

A new optimizer adds its small test options to ``SMALL_OPTIONS``; the test fails for a
registered optimizer that has none.
"""

import random

import pytest

import tasks
from optimizers.base import Budget, Checkpoint, get_optimizer, optimizer_names, validate_result
from tasks.heldout import load_test_examples
from tests.conftest import tiny_local_model
from tests.scripted import ScriptedLLM

COMMON = {"max_reasoning_tokens": 4, "n_dev": 2}
SMALL_OPTIONS = {
    "zero_shot_cot": {},
    "greater": {**COMMON, "n_train": 3, "steps": 3, "final_candidates": 2, "topk": 5, "grad_batch_size": 3},
    "ape": {**COMMON, "proposal_requests": 1, "proposals_per_request": 3, "screen_examples": 2, "rescore_top": 2,
            "resample_rounds": 5, "resample_top": 2, "variations": 2},
    "opro": {**COMMON, "steps": 3, "samples_per_step": 2, "final_candidates": 2},
    "protegi": {**COMMON, "rounds": 2, "beam_size": 2, "minibatch": 4, "gradient_groups": 1, "bandit_rounds": 2,
                "arms_per_round": 2, "samples_per_pull": 2, "paraphrases": 1},
    "gpo": {**COMMON, "epochs": 2, "batch_size": 25, "candidates_per_step": 2},
}
BUDGET = 130


def test_every_registered_optimizer_has_contract_options():
    assert set(optimizer_names()) == set(SMALL_OPTIONS)


class Recorder:
    """Wraps the task model's generation to record every input it is given."""

    def __init__(self, model):
        self.inputs: list[str] = []
        original = model._generate_rows  # every generation path ends here

        def recording(rows, params, prefix_cache, *args):
            for prefix, ids in rows:
                full = (prefix_cache.prefixes[prefix] if prefix is not None else []) + list(ids)
                self.inputs.append(model.tokenizer.decode(full))
            return original(rows, params, prefix_cache, *args)

        model._generate_rows = recording


def _optimize(name, seed=0, budget=BUDGET):
    model = tiny_local_model()
    recorder = Recorder(model)
    result = get_optimizer(name)(**SMALL_OPTIONS[name]).optimize(
        tasks.load_task_data("navigate"), model, Budget(budget), random.Random(seed), Checkpoint(None), seed=seed,
        optimizer_model=ScriptedLLM(),
    )
    return result, recorder


@pytest.mark.parametrize("name", sorted(SMALL_OPTIONS))
def test_contract(name):
    result, recorder = _optimize(name)
    validate_result(result)
    assert result["optimizer"] == name and result["task"] == "navigate"
    assert result["budget"]["task_calls"] <= BUDGET
    assert all(r["task_calls"] <= BUDGET for r in result["trajectory"])
    test_questions = [e.question for e in load_test_examples("navigate")]
    leaked = [q for q in test_questions if any(q in text for text in recorder.inputs)]
    assert not leaked, f"{name} showed {len(leaked)} test rows to the task model"
    if name != "zero_shot_cot":
        assert recorder.inputs, "the optimizer never ran the task model"
    again, _ = _optimize(name)
    assert again["prompt"] == result["prompt"]
    assert [r["prompt"] for r in again["trajectory"]] == [r["prompt"] for r in result["trajectory"]]


@pytest.mark.parametrize("name", sorted(set(SMALL_OPTIONS) - {"zero_shot_cot"}))
def test_tight_budget_is_never_exceeded(name):
    budget = 60 if name != "opro" else 55  # OPRO scores its initial instruction on all 50 train rows
    result, _ = _optimize(name, budget=budget)
    assert result["budget"]["task_calls"] <= budget
