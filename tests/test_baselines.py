"""The text-feedback baselines' loop logic, with a scripted optimizer LLM."""

import re

import pytest

import tasks
from optimizers.base import Budget
from optimizers.gpo import retrieve, steps_per_epoch, word_cap
from optimizers.harness import Evaluation, Harness
from optimizers.optimizer_llm import clean_prompt, parse_tagged
from optimizers.protegi import ucb_choose
from tests.conftest import optimize, tiny_local_model
from tests.scripted import ScriptedLLM


def _score_with(monkeypatch, evaluate):
    """Replace the task model's scoring (single and batched) with ``evaluate(self, prompt, examples)``."""
    monkeypatch.setattr(Harness, "evaluate_many", lambda self, requests: [evaluate(self, p, e) for p, e in requests])


@pytest.fixture
def scored_by_length(monkeypatch):
    """Task scores that depend on the prompt only (longer prompts score higher), charged as usual."""

    def evaluate(self, prompt, examples):
        self.budget.charge_task_calls(prompt, [e.id for e in examples])
        accuracy = min(1.0, len(prompt) / 100)
        return Evaluation(accuracy, tuple([accuracy > 0.5] * len(examples)), tuple(["A"] * len(examples)), 1.0,
                          tuple(["reasoning"] * len(examples)))

    _score_with(monkeypatch, evaluate)


def _run(name, llm, budget=None, task="navigate", **options):
    return optimize(name, options, optimizer_model=llm, budget=budget, task=task)


def test_parsing_copes_with_small_model_output():
    assert parse_tagged("<INS>Be careful.", "<INS>", "</INS>") == ["Be careful."]  # missing closing tag
    assert parse_tagged('**Instruction:** "think twice"</INS>', "<INS>", "</INS>") == ["Think twice"]
    assert parse_tagged("<START>a<END> and <START>b<END>", "<START>", "<END>") == ["A", "B"]
    assert clean_prompt("   ") is None and clean_prompt("x" * 600) is None
    assert clean_prompt("Prompt: use logic") == "Use logic"


def test_opro_meta_prompt_shows_at_most_20_instructions_in_ascending_order(scored_by_length):
    llm = ScriptedLLM(lambda message, n: f"<INS>{'Reason with care ' * (1 + n % 5)}variant {n}</INS>")
    result = _run("opro", llm, steps=5, samples_per_step=8)
    assert len(llm.messages) == 5 * 8
    for message in llm.messages:
        scores = [int(s) for s in re.findall(r"score:\n(\d+)", message)]
        assert 1 <= len(scores) <= 20
        assert scores == sorted(scores)
    last = llm.messages[-1]
    assert len(re.findall(r"score:\n", last)) == 20  # 1 initial + 8 x 4 steps seen, capped at 20
    assert result["budget"]["optimizer_calls"] == 40


def test_protegi_keeps_a_beam_of_the_configured_width(monkeypatch):
    def evaluate(self, prompt, examples):  # every prompt is wrong on every example: errors to learn from
        self.budget.charge_task_calls(prompt, [e.id for e in examples])
        accuracy = (hash(prompt) % 100) / 1000
        return Evaluation(accuracy, tuple([False] * len(examples)), tuple(["B"] * len(examples)), 1.0,
                          tuple(["because"] * len(examples)))

    _score_with(monkeypatch, evaluate)
    llm = ScriptedLLM()
    result = _run("protegi", llm, rounds=3, beam_size=3, minibatch=8, gradient_groups=2, bandit_rounds=3,
                  arms_per_round=4, samples_per_pull=4)
    for record in result["trajectory"][1:]:
        assert len(record["details"]["beam"]) == 3
        assert record["details"]["pool"] > 3
    assert any("The problem with the instruction is" in m for m in llm.messages)
    assert any("wrong" in m and "## Example 1" in m for m in llm.messages)


def test_protegi_expands_the_whole_beam_in_one_call_per_stage(monkeypatch):
    """Gradients, edits and paraphrases of every beam prompt go to the optimizer LLM together."""
    def evaluate(self, prompt, examples):
        self.budget.charge_task_calls(prompt, [e.id for e in examples])
        return Evaluation(0.0, tuple([False] * len(examples)), tuple(["B"] * len(examples)), 1.0,
                          tuple(["because"] * len(examples)))

    _score_with(monkeypatch, evaluate)
    llm = ScriptedLLM()
    batches, generate = [], llm._generate_chat

    def counting(requests, *rest):
        batches.append(len(requests))
        return generate(requests, *rest)

    monkeypatch.setattr(llm, "_generate_chat", counting)
    _run("protegi", llm, rounds=2, beam_size=3, minibatch=8, gradient_groups=2, paraphrases=1, bandit_rounds=2,
         arms_per_round=4, samples_per_pull=4)
    # round 1: one parent; round 2: the beam of 3; each round = gradients, edits, paraphrases
    assert len(batches) == 6
    assert batches[0] == 2 and batches[3] == 3 * 2  # gradient requests: parents x gradient_groups
    assert batches[4] == 3 * 2  # one edit per reason
    assert batches[5] == 3 * 3  # each parent's 2 edits and itself, one paraphrase each


def test_gpo_word_cap_follows_the_cosine_schedule():
    total = 18
    caps = [word_cap(t, total, 50, 10) for t in range(total + 1)]
    assert caps[0] == 50 and caps[-1] == 10 and caps[1] == 49
    assert caps == sorted(caps, reverse=True)
    assert caps[total // 2] == 30
    assert steps_per_epoch(50, 8) == 6 and steps_per_epoch(100, 8) == 13


def test_gpo_meta_prompts_carry_the_scheduled_cap_and_retrieval(scored_by_length):
    llm = ScriptedLLM()
    result = _run("gpo", llm, epochs=1, candidates_per_step=2)
    total = steps_per_epoch(50, 8)
    caps = [int(re.search(r"change up to (\d+) words", m).group(1)) for m in llm.messages[::2]]
    assert caps == [word_cap(t, total, 50, 10) for t in range(1, total + 1)]
    assert all(m.count("Prompt: ") <= 3 for m in llm.messages)
    assert [r["details"]["word_cap"] for r in result["trajectory"][1:]] == caps
    prompts = [r["prompt"] for r in result["trajectory"]]
    assert len(set(prompts)) == len(prompts), "GPO always moves to a prompt not chosen before"


def test_gpo_retrieval_puts_current_first_then_most_similar():
    trajectory = [{"prompt": p, "score": 0.1} for p in ["add the numbers", "think about colours", "add numbers carefully"]]
    shown = retrieve(trajectory, 2)
    assert [s["prompt"] for s in shown] == ["add numbers carefully", "add the numbers"]


def test_ape_selection_picks_the_best_scoring_candidate(scored_by_length):
    lengths = ["Short.", "A somewhat longer instruction.", "The longest instruction of them all, by quite a margin."]
    llm = ScriptedLLM(lambda message, n: lengths[n % 3])
    result = _run("ape", llm, proposal_requests=1, proposals_per_request=3, screen_examples=2, rescore_top=3)
    assert result["prompt"] == lengths[2]
    assert "Input:" in llm.messages[0] and "Output:" in llm.messages[0]


def test_ape_resampling_asks_for_variations(scored_by_length):
    llm = ScriptedLLM()
    result = _run("ape", llm, proposal_requests=1, proposals_per_request=4, rescore_top=2, resample_rounds=2,
                  resample_top=2, variations=2)
    assert sum("variation of the following instruction" in m for m in llm.messages) == 2 * 2 * 2
    assert len(result["trajectory"]) == 1 + 3 + 2  # the initial prompt, three stages, two resampling rounds


def test_rejected_outputs_are_still_charged(scored_by_length):
    llm = ScriptedLLM(lambda message, n: "" if n % 2 else "<INS>Work it out.</INS>")
    result = _run("opro", llm, steps=2, samples_per_step=4)
    assert result["budget"]["optimizer_calls"] == 8
    assert result["trajectory"][-1]["details"]["rejected_so_far"] >= 4


def test_many_prompts_are_scored_in_one_batched_call():
    model = tiny_local_model()
    calls = []
    generate = model.chat_and_answer
    model.chat_and_answer = lambda conversations, *args: calls.append(len(conversations)) or generate(conversations, *args)
    budget = Budget(None)
    harness = Harness(tasks.get_task("navigate"), model, budget, max_reasoning_tokens=4)
    rows = tasks.load_task_data("navigate").train
    first, second = harness.evaluate_many([("Be brief.", rows[:2]), ("Think.", rows[2:5])])
    assert calls == [5] and budget.task_calls == 5
    assert len(first.correct) == 2 and len(second.correct) == 3 and len(second.reasoning) == 3
    assert first.accuracy == sum(first.correct) / 2 and second.accuracy == sum(second.correct) / 3
    with pytest.raises(ValueError, match="at least one example"):
        harness.evaluate_many([("Be brief.", [])])


def test_ucb_allocation_follows_the_reference_formula():
    """ProTeGi's bandit as LMOps' UCBBandits.choose: counts in samples, t = the bandit round."""
    import math
    import random

    totals, counts = [24.0, 8.0, 30.0, 0.0], [32.0, 32.0, 64.0, 0.0]
    means = [0.75, 0.25, 30 / 64, 0.0]
    for t in (2, 5):
        bound = [m + 1.0 * math.sqrt(math.log(t) / (c + 1e-3)) for m, c in zip(means, counts)]
        expected = sorted(range(4), key=lambda i: -bound[i])[:2]
        assert ucb_choose(totals, counts, 2, t, 1.0, random.Random(0)) == expected
    assert ucb_choose(totals, counts, 2, 5, 1.0, random.Random(0)) == [3, 0]  # the unpulled arm explores first
    assert ucb_choose(totals, counts, 2, 1, 1.0, random.Random(0)) == [0, 2]  # ln 1 = 0: greedy on the means
    assert sorted(ucb_choose([0.0] * 4, [0.0] * 4, 4, 0, 1.0, random.Random(0))) == [0, 1, 2, 3]  # random at first
    e_bound = [m + 2.0 * math.sqrt(2.0 / (c + 1e-3)) for m, c in zip(means, counts)]
    assert ucb_choose(totals, counts, 3, 7, 2.0, random.Random(0), mode="ucb-e") == sorted(
        range(4), key=lambda i: -e_bound[i])[:3]


def test_identical_requests_in_one_batch_get_independent_samples():
    """Two equal meta-prompts in one call are two samples, not one cached completion charged twice."""
    from model_engine import GenerationCache
    from optimizers.optimizer_llm import OptimizerLLM

    model = tiny_local_model(cache=GenerationCache(":memory:"))
    budget = Budget(None)
    llm = OptimizerLLM(model, budget, seed=0)
    first, second = llm.sample_many(["Write an instruction.", "Write an instruction."], 1, 1.0, 12)
    assert budget.optimizer_calls == 2 and model.meter.total.calls == 2
    assert first != second


def test_a_local_registry_model_can_write_the_prompts(scored_by_length):
    """The optimizer LLM can be another local model than the task model; the result names it."""
    writer = tiny_local_model(seed=1)
    result = optimize("opro", {"steps": 1, "samples_per_step": 2}, optimizer_model=writer)
    assert result["optimizer_llm"]["name"] == writer.spec.name != result["model"]
    assert writer.meter.total.calls == 2
    assert optimize("greater", {"n_train": 2, "steps": 1, "topk": 4}, optimizer_model=writer)["optimizer_llm"] is None
