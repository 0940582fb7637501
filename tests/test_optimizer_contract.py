"""One contract, checked for every registered optimizer with its own ``test_options``.

A new optimizer needs no edit here: the registry lists it and its class carries its
small options (benchopt's pattern).
"""

import pytest

from optimizers.base import Budget, get_optimizer, optimizer_names, validate_result
from optimizers.contract import RESULT_SCHEMA, result_schema
from tasks.heldout import load_test_examples
from tests.conftest import optimize, tiny_local_model
from tests.scripted import ScriptedLLM

BUDGET = 130
TERMS = {"initial_prompt": "Think it through.", "max_reasoning_tokens": 4, "n_dev": 3}
OPTIMIZING = [name for name in optimizer_names() if not get_optimizer(name).fixed]


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


def _optimize(name, seed=0, budget=None, terms=TERMS):
    model = tiny_local_model()
    recorder = Recorder(model)
    result = optimize(name, get_optimizer(name).test_options, model=model, optimizer_model=ScriptedLLM(),
                      budget=budget or Budget(BUDGET), seed=seed, terms=terms)
    return result, recorder


def test_the_result_schema_file_is_generated_from_the_contract():
    import json

    assert json.loads(RESULT_SCHEMA.read_text()) == result_schema(), "run `prompt-suite schema --write`"


@pytest.mark.parametrize("name", optimizer_names())
def test_contract(name):
    result, recorder = _optimize(name)
    validate_result(result)
    assert result["optimizer"] == name and result["task"] == "navigate"
    trajectory = result["trajectory"]
    assert trajectory[0]["step"] == 0 and trajectory[0]["prompt"] == (
        TERMS["initial_prompt"] if name != "zero_shot_cot" else get_optimizer(name)().options.prompt)
    assert result["budget"]["task_calls"] <= BUDGET
    assert all(step["task_calls"] <= BUDGET for step in trajectory)
    assert all(step["split"] in (None, "train", "dev", "screen", "minibatch") for step in trajectory)
    test_questions = [e.question for e in load_test_examples("navigate")]
    leaked = [q for q in test_questions if any(q in text for text in recorder.inputs)]
    assert not leaked, f"{name} showed {len(leaked)} test rows to the task model"
    again, _ = _optimize(name)
    assert again["prompt"] == result["prompt"]
    assert [s["prompt"] for s in again["trajectory"]] == [s["prompt"] for s in trajectory]


@pytest.mark.parametrize("name", OPTIMIZING)
def test_final_choice_uses_the_shared_dev_rows_and_keeps_the_initial_prompt(name):
    result, _ = _optimize(name)
    selection = result["selection"]
    assert selection["split"] == "dev" and selection["n"] == TERMS["n_dev"]
    candidates = [c["prompt"] for c in selection["candidates"]]
    assert TERMS["initial_prompt"] in candidates
    best = max(selection["candidates"], key=lambda c: c["dev_accuracy"])
    assert result["prompt"] in candidates and next(
        c for c in selection["candidates"] if c["prompt"] == result["prompt"])["dev_accuracy"] == best["dev_accuracy"]


@pytest.mark.parametrize("name", OPTIMIZING)
def test_spend_reaches_the_budget_or_the_result_says_why(name):
    result, _ = _optimize(name)
    spent, stopped = result["budget"]["task_calls"] / BUDGET, result["stopped"]
    assert stopped["task_calls"] <= result["budget"]["task_calls"]
    assert spent >= 0.9 or stopped["reason"] in ("schedule", "exhausted", "optimizer_calls"), (spent, stopped)


@pytest.mark.parametrize("name", OPTIMIZING)
@pytest.mark.parametrize("cap", ["task_calls", "optimizer_calls"])
def test_either_cap_ends_the_run_with_a_result(name, cap, half_right):
    uses_llm = get_optimizer(name).uses_optimizer_llm
    if cap == "optimizer_calls" and not uses_llm:
        pytest.skip(f"{name} uses no optimizer LLM")
    budget = Budget(25, None) if cap == "task_calls" else Budget(None, 2)
    result, _ = _optimize(name, budget=budget)
    validate_result(result)
    assert result["stopped"]["reason"] == cap, result["stopped"]
    assert result["budget"]["task_calls"] <= 25 if cap == "task_calls" else result["budget"]["optimizer_calls"] <= 2
    assert result["prompt"]


@pytest.mark.parametrize("name", OPTIMIZING)
def test_a_budget_that_cannot_score_anything_still_returns_the_initial_prompt(name):
    result, _ = _optimize(name, budget=Budget(0, 0))
    assert result["prompt"] == TERMS["initial_prompt"]
    assert result["budget"]["task_calls"] == 0 and result["stopped"]["reason"] in ("task_calls", "optimizer_calls")
