"""Evaluation through lm-eval (two passes, the suite's parser as a filter) and the report."""

import dataclasses
import json
from pathlib import Path
import re

import pytest

import tasks
from evaluation.lmeval import PromptCell, evaluate_cells
from evaluation.lmeval_filters import answer_after_extractor, answer_in_reasoning
from tasks.heldout import load_test_examples
from tests.conftest import tiny_local_model


def test_filters_use_the_suite_parser():
    docs = [{"task": "navigate", "reasoning": "so the answer is No."}, {"task": "navigate", "reasoning": "hmm"}]
    assert answer_after_extractor([["Yes"], ["1."]], docs) == [["Yes"], ["[invalid]"]]
    assert answer_after_extractor([["1."], ["No"]], docs) == [["No"], ["No"]]
    assert answer_in_reasoning([["We are back, so the answer is Yes."]], docs[:1]) == [["Yes"]]


def test_two_pass_lm_eval_run_on_a_tiny_model(tmp_path):
    from lm_eval.models.huggingface import HFLM

    model = tiny_local_model()
    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:3]
    cells = [PromptCell("tiny__zero_shot_cot", "Let's think step by step."), PromptCell("tiny__manual", "Be careful.")]
    results = evaluate_cells(lm, task, examples, cells, tmp_path, max_reasoning_tokens=4)
    assert set(results) == {c.name for c in cells}
    for result in results.values():
        samples = result["samples"]
        assert result["n"] == 3 and 0 <= result["accuracy"] <= 1 and result["answer_step"] == "choice"
        assert [s["id"] for s in samples] == [e.id for e in examples]
        assert all(s["gold"] in ("Yes", "No") for s in samples)
        # a closed answer set: every row gets the valid answer its log-likelihoods favour
        assert all(s["answer"] == ("Yes", "No")[s["choice_logprobs"].index(max(s["choice_logprobs"]))] for s in samples)
        assert result["parse_rate"] == 1.0
        assert result["accuracy"] == sum(s["answer"] == s["gold"] for s in samples) / 3
        assert all(s["strict"] in ("Yes", "No", "[invalid]") and s["lenient"] in ("Yes", "No", "[invalid]") for s in samples)
        assert result["strict_parse_rate"] <= result["lenient_parse_rate"]
        assert result["strict_accuracy"] == sum(s["strict"] == s["gold"] for s in samples) / 3
        assert result["lenient_accuracy"] == sum(s["lenient"] == s["gold"] for s in samples) / 3
        assert result["extractor"]["variant"] == "dollar"
    config = (tmp_path / "suite_answer_navigate_tiny__manual.yaml").read_text()
    assert re.search(r"filter_fn: !function '?suite_filters.answer_after_extractor", config)
    assert re.search(r"filter_fn: !function '?suite_filters.answer_strict", config)
    assert "gen_prefix: gen_prefix" in config
    assert "output_type: multiple_choice" in (tmp_path / "suite_choice_navigate_tiny__manual.yaml").read_text()
    documents = [json.loads(line) for line in (tmp_path / "tiny__manual" / "answer.jsonl").read_text().splitlines()]
    assert all(d["gen_prefix"].endswith(task.extractor().text) for d in documents)
    assert all(d["choices"] == [" Yes", " No"] and d["gold_choice"] in d["choices"] for d in documents)
    assert all(d["context"].endswith("\nBe careful.") for d in documents)
    train_and_dev = {e.question for e in tasks.load_task_data("navigate").train + tasks.load_task_data("navigate").dev}
    assert not any(d["context"].split("\n")[0] in train_and_dev for d in documents)


def test_response_cache_resumes_without_calling_the_model_again(tmp_path):
    """What an interrupted (or repeated) evaluate job relies on: stored responses are reused."""
    from lm_eval.models.huggingface import HFLM

    model = tiny_local_model()
    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:3]
    cells = [PromptCell("tiny__manual", "Be careful.")]
    cache = tmp_path / "cache" / "tiny"
    first = evaluate_cells(lm, task, examples, cells, tmp_path / "a", max_reasoning_tokens=4, response_cache=cache)

    def no_generation(requests, *args, **kwargs):
        raise AssertionError(f"the model was asked again for {len(requests)} responses")

    lm.generate_until = no_generation
    second = evaluate_cells(lm, task, examples, cells, tmp_path / "b", max_reasoning_tokens=4, response_cache=cache)
    assert second == first
    with pytest.raises(AssertionError, match="asked again"):  # without the cache the model is called
        evaluate_cells(lm, task, examples, cells, tmp_path / "c", max_reasoning_tokens=4)


def test_response_cache_path_depends_on_the_model_identity():
    from evaluation.run import response_cache_path

    base = {"backend": "hf", "name": "qwen", "checksum": "abc", "dtype": "float32", "device": "cpu"}
    assert response_cache_path("c", base, "t") == response_cache_path("c", dict(base), "t")
    assert response_cache_path("c", base, "t") != response_cache_path("c", {**base, "checksum": "abd"}, "t")
    assert response_cache_path("c", base, "t") != response_cache_path("c", {**base, "dtype": "bfloat16"}, "t")
    endpoint = {"backend": "endpoint", "base_url": "http://a/v1", "model": "m"}
    assert response_cache_path("c", endpoint, "t") != response_cache_path("c", {**endpoint, "model": "n"}, "t")
    # one file per evaluate job (task x target): jobs on different hosts never share a database
    assert response_cache_path("c", base, "navigate") != response_cache_path("c", base, "gsm8k")


def test_scoring_counts_correct_answers(tmp_path):
    """An lm-eval model that always reasons to "Yes" scores exactly the share of gold "Yes"."""
    from lm_eval.api.model import LM

    class AlwaysYes(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return ["We end where we began, so the answer is Yes." if "$" not in r.args[0] else "Yes" for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            return [(0.0 if r.args[1] == " Yes" else -5.0, True) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:8]
    result = evaluate_cells(AlwaysYes(), task, examples, [PromptCell("fixed", "Think.")], tmp_path, 16,
                            chat=False)["fixed"]
    expected = sum(e.gold == "Yes" for e in examples) / 8
    assert 0 < expected < 1
    assert result["accuracy"] == expected and result["accuracy_without_extractor"] == expected
    assert result["strict_accuracy"] == expected and result["lenient_accuracy"] == expected
    assert result["parse_rate"] == 1.0 and result["strict_parse_rate"] == 1.0


def test_base_models_are_evaluated_in_the_plain_layout_they_are_optimized_in(tmp_path):
    """No chat template: the reasoning pass reads "Question: ... Answer:", the answer pass continues
    it as plain text (no gen_prefix), and the reasoning is cut at the next "Question:"."""
    from lm_eval.models.huggingface import HFLM

    model = tiny_local_model(chat=False)
    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:2]
    evaluate_cells(lm, task, examples, [PromptCell("base", "Be careful.")], tmp_path, 4, chat=False)
    reasoning_docs = [json.loads(line) for line in (tmp_path / "base" / "reasoning.jsonl").read_text().splitlines()]
    answer_docs = [json.loads(line) for line in (tmp_path / "base" / "answer.jsonl").read_text().splitlines()]
    for example, doc, answer in zip(examples, reasoning_docs, answer_docs):
        assert doc["context"] == model.render([{"role": "user", "content": f"{example.question}\nBe careful."}])
        assert answer["gen_prefix"] is None
        assert answer["context"] == model.render([{"role": "user", "content": f"{example.question}\nBe careful."}],
                                                 f"{answer['reasoning'].strip()} {task.extractor().text}".strip())
    reasoning_config = (tmp_path / "suite_reasoning_navigate_base.yaml").read_text()
    assert "Question:" in reasoning_config.split("until:")[1].split("max_gen_toks")[0]  # the stop rule
    assert "gen_prefix" not in (tmp_path / "suite_answer_navigate_base.yaml").read_text()


def test_build_lm_reads_whether_the_target_has_a_chat_template():
    from evaluation.run import build_lm
    from model_engine.registry import get_model_spec, register_model

    smollm2 = get_model_spec("smollm2-135m")
    base = register_model(dataclasses.replace(smollm2, name="smollm2-135m-read-as-base", chat=False))
    assert build_lm("hf", smollm2.name)[1]["chat"] is True
    assert build_lm("hf", base.name)[1]["chat"] is False


@pytest.mark.parametrize("field, value, escapes", [("model", "../../outside", True), ("task", "/tmp/x", True),
                                                   ("optimizer", ".hidden", False)])
def test_a_prompt_file_cannot_place_results_outside_the_output_folder(tmp_path, field, value, escapes):
    """Fields of a prompt file become path components of its evaluation files: plain names only."""
    from evaluation.run import output_path, read_prompt_file
    from suite_errors import SuiteError
    from tests.conftest import optimize

    record = optimize("zero_shot_cot")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record))
    assert output_path(tmp_path / "eval", read_prompt_file(good), "smollm2-135m").is_relative_to(tmp_path / "eval")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record | {field: value}))
    with pytest.raises(SuiteError, match=f"{bad}.*{field}"):
        read_prompt_file(bad)
    if escapes:  # and were the contract bypassed, the path itself is checked
        with pytest.raises(SuiteError, match="would write outside"):
            output_path(tmp_path / "eval", record | {field: value}, "smollm2-135m")


def test_a_prompt_that_cannot_fit_the_context_is_refused_before_any_generation(tmp_path):
    """lm-eval would cut the question away silently and score an ordinary 0%."""
    from lm_eval.models.huggingface import HFLM

    from evaluation.run import evaluate_prompt_files
    from suite_errors import SuiteError

    model = tiny_local_model()
    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=2, device="cpu", max_length=1024)

    def never(*args, **kwargs):
        raise AssertionError("generation started")

    lm.generate_until = lm.loglikelihood = never
    base = {"task": "navigate", "model": "tiny", "optimizer": "manual", "provenance": {"seed": 0}}
    records = {"short.json": base | {"prompt": "Think."},
               "long.json": base | {"optimizer": "verbose", "prompt": "Think hard. " * 400}}
    with pytest.raises(SuiteError, match=r"Prompt file long\.json: its prompt \(4800 characters\) with test row "
                                         r"bbh/navigate#\d+ takes \d+ tokens.*context of 1024 tokens"):
        evaluate_prompt_files("navigate", "tiny", records, str(tmp_path / "eval"), str(tmp_path / "work"), lm,
                              {"chat": True}, max_reasoning_tokens=64)
    assert not (tmp_path / "eval").exists()


def test_an_evaluate_job_writes_only_the_files_its_rule_declares(tmp_path):
    """A prompt file whose fields disagree with its path (here: another seed) would write an evaluation
    file the workflow does not know; the job refuses before the model loads, naming the file."""
    import subprocess
    import sys

    from tests.conftest import optimize

    record = optimize("zero_shot_cot")
    record["provenance"]["seed"] = 3
    prompt = tmp_path / "seed0.json"
    prompt.write_text(json.dumps(record))
    declared = tmp_path / "eval" / record["task"] / record["model"] / "zero_shot_cot" / "seed0" / "smollm2-135m.json"
    result = subprocess.run([sys.executable, "-m", "suite_cli", "evaluate", record["task"], "smollm2-135m",
                             "--prompt-files", str(prompt), "--output-dir", str(tmp_path / "eval"),
                             "--outputs", str(declared)], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "other evaluation files than the rule declares" in result.stderr and "seed3" in result.stderr
    assert "Loading" not in result.stderr and not (tmp_path / "eval").exists()
