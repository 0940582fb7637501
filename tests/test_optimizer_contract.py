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


@pytest.mark.parametrize("name", OPTIMIZING)
def test_the_stated_minimum_budget_buys_a_prompt_of_the_methods_own_on_dev(name):
    """What the dry run warns against: below ``minimum_task_calls`` a run may try nothing; at it,
    the final choice on dev has a prompt of the method's own beside the initial prompt."""
    import tasks

    data = tasks.load_task_data("navigate")
    optimizer = get_optimizer(name)(**get_optimizer(name).test_options)
    minimum = optimizer.minimum_task_calls(len(data.train), TERMS["n_dev"])
    assert minimum >= optimizer.dev_reserve(TERMS["n_dev"]) > 0
    result, _ = _optimize(name, budget=Budget(minimum))
    assert result["budget"]["task_calls"] <= minimum
    own = [c for c in result["selection"]["candidates"]
           if c["prompt"] != TERMS["initial_prompt"] and c["dev_accuracy"] is not None]
    assert own, (minimum, result["stopped"], result["selection"])


def test_the_dry_run_names_each_method_whose_budget_cannot_buy_a_step(tmp_path):
    from suite_config import validate_config
    from suite_plan import budget_shortfalls

    config = validate_config({
        "tasks": ["navigate"], "models": ["smollm2-135m"], "terms": {"n_dev": 8}, "budget": {"max_task_calls": 40},
        "optimizers": {"zero_shot_cot": {}, "gpo": {}, "greater": {"n_train": 6, "candidates_per_step": 3}}})
    lines = budget_shortfalls(config)
    # GReaTer: 6 rows for the initial prompt + 3 x 6 for one step's candidates + (10 finals + 1) x 8 dev rows
    assert lines == [f"greater on navigate: max_task_calls 40 is below the {6 + 18 + 88} task calls that guarantee one "
                     "step of its own (its options, and the final choice on 8 dev rows held back); the run may return "
                     "the initial prompt having tried nothing"]
    config["budget"]["max_task_calls"] = 112
    assert budget_shortfalls(config) == []


def test_an_optimizer_output_over_the_prompt_cap_is_never_run_nor_chosen(caplog):
    """terms.max_prompt_chars binds optimizer outputs: a long instruction scores 0 without a task call."""
    terms = {**TERMS, "max_prompt_chars": 60}
    long_text = "Consider every single detail of the question with the utmost care before you answer. " * 3

    def respond(message, n):
        return f"<INS>{long_text if n % 2 == 0 else f'Think simply, variant {n}.'}</INS>"

    model = tiny_local_model()
    recorder = Recorder(model)
    llm = ScriptedLLM(respond)
    result = optimize("opro", get_optimizer("opro").test_options, model=model, optimizer_model=llm,
                      budget=Budget(BUDGET), terms=terms)
    assert "a prompt is not run: it has 254 characters, more than terms.max_prompt_chars (60)" in caplog.text
    assert not any(long_text in text for text in recorder.inputs), "a prompt over the cap reached the task model"
    assert all(len(c["prompt"]) <= 60 for c in result["selection"]["candidates"])
    assert len(result["prompt"]) <= 60


def test_an_initial_prompt_too_long_for_the_context_is_refused_before_any_generation():
    from optimizers.base import OptionError

    model = tiny_local_model()  # 512 positions
    recorder = Recorder(model)
    terms = {**TERMS, "initial_prompt": "Think it through, one careful step after another. " * 30}
    with pytest.raises(OptionError, match=r"The initial prompt with navigate row bbh/navigate#\d+ takes \d+ tokens, "
                                          r"and with \d+ more .* exceeds tiny-llama-0-True's context of 512 tokens"):
        optimize("opro", get_optimizer("opro").test_options, model=model, optimizer_model=ScriptedLLM(),
                 budget=Budget(BUDGET), terms=terms)
    assert recorder.inputs == []


def test_an_initial_prompt_over_the_cap_is_refused_by_the_terms():
    from pydantic import ValidationError

    from optimizers.contract import Terms

    with pytest.raises(ValidationError, match="initial_prompt has 30 characters, more than max_prompt_chars"):
        Terms(initial_prompt="x" * 30, max_prompt_chars=20)
