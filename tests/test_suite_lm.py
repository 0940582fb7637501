"""The suite's engine as an lm-eval model: both passes, the same answers as lm-eval's hf, cache resume, bad requests."""

import pytest

import tasks
from evaluation.lmeval import PromptCell, evaluate_cells
from evaluation.suite_lm import SuiteLM
from suite_errors import SuiteError
from tasks.heldout import load_test_examples
from tests.conftest import tiny_local_model, tiny_model_with_smollm2_tokenizer

CELLS = [PromptCell("zero_shot_cot", "Let's think step by step."), PromptCell("manual", "Be careful.")]
#: what each evaluation reads: the reasoning, the written answer (strict and lenient) and the choice scores
COMPARED = ("reasoning", "continuation", "strict", "lenient", "answer")


def _run_both(model, task_name: str, rows: int, tokens: int, tmp_path, chat: bool = True):
    from lm_eval.models.huggingface import HFLM

    task = tasks.get_task(task_name)
    examples = load_test_examples(task_name)[:rows]
    hf = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    suite = SuiteLM(model)
    ours = evaluate_cells(suite, task, examples, CELLS, tmp_path / "suite", tokens, chat=chat)
    theirs = evaluate_cells(hf, task, examples, CELLS, tmp_path / "hf", tokens, chat=chat)
    # every answer-pass request was read while its reasoning was generated, none ran again
    assert suite.answers_served == len(examples) * len(CELLS)
    return ours, theirs


def _assert_same(ours: dict, theirs: dict) -> None:
    for cell in ours:
        for mine, other in zip(ours[cell]["samples"], theirs[cell]["samples"], strict=True):
            assert {key: mine[key] for key in COMPARED} == {key: other[key] for key in COMPARED}, mine["id"]
            if mine["choice_logprobs"] is not None:
                assert mine["choice_logprobs"] == pytest.approx(other["choice_logprobs"], rel=1e-3, abs=1e-3)
        for key in ("accuracy", "strict_accuracy", "lenient_accuracy", "parse_rate"):
            assert ours[cell][key] == theirs[cell][key]


@pytest.mark.parametrize("task_name", ["navigate", "object_counting"])
def test_both_passes_give_lm_eval_hf_answers_on_a_tiny_model(tmp_path, task_name):
    """Closed answers (choice by likelihood) and open answers (written), greedy fp32, chat template."""
    ours, theirs = _run_both(tiny_local_model(batch_size=3), task_name, 5, 12, tmp_path)
    _assert_same(ours, theirs)
    assert ours["manual"]["answer_step"] == ("choice" if task_name == "navigate" else "generated")


def test_both_passes_give_lm_eval_hf_answers_on_a_base_model(tmp_path):
    model = tiny_local_model(chat=False, batch_size=2)
    ours, theirs = _run_both(model, "navigate", 3, 8, tmp_path, chat=False)
    _assert_same(ours, theirs)


def test_both_passes_give_lm_eval_hf_answers_on_smollm2(smollm2, tmp_path):
    """The real model: the reasoning, the written answers and the chosen answers equal lm-eval's hf."""
    ours, theirs = _run_both(smollm2, "navigate", 4, 24, tmp_path)
    _assert_same(ours, theirs)
    assert any(s["reasoning"] for s in ours["manual"]["samples"])


def test_an_interrupted_job_resumes_from_the_response_cache(tmp_path):
    """Each chunk's responses are stored as soon as they exist: after a failure only the rest is generated."""
    model = tiny_local_model(batch_size=1)  # chunks of 4 requests
    lm = SuiteLM(model)
    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:6]
    cells = CELLS[:1]
    cache = tmp_path / "cache" / "tiny"
    generate, asked = model.complete_ids_and_answers, []

    def failing_after_one_chunk(sequences, *args):
        if asked:
            raise RuntimeError("the job was killed")
        asked.append(len(sequences))
        return generate(sequences, *args)

    model.complete_ids_and_answers = failing_after_one_chunk
    with pytest.raises(RuntimeError, match="killed"):
        evaluate_cells(lm, task, examples, cells, tmp_path / "a", max_reasoning_tokens=4, response_cache=cache)
    assert asked == [4]

    def counting(sequences, *args):
        asked.append(len(sequences))
        return generate(sequences, *args)

    model.complete_ids_and_answers = counting
    resumed = evaluate_cells(lm, task, examples, cells, tmp_path / "b", max_reasoning_tokens=4, response_cache=cache)
    # only the reasoning the first attempt did not finish, with its answers; then the answers of the
    # reasoning that came from the cache
    assert asked[1:] == [2, 4] and lm.answers_served == 2
    model.complete_ids_and_answers = generate
    fresh = evaluate_cells(SuiteLM(model), task, examples, cells, tmp_path / "c", max_reasoning_tokens=4)
    assert resumed == fresh


class _Request:
    def __init__(self, *args):
        self.args = args


def test_bad_requests_are_refused_with_the_reason():
    lm = SuiteLM(tiny_local_model())
    with pytest.raises(SuiteError, match="top_k"):
        lm.generate_until([_Request("Question: 1", {"until": ["\n"], "top_k": 5})])
    with pytest.raises(SuiteError, match="more than .*context of 512"):
        lm.generate_until([_Request("word " * 600, {"until": ["\n"], "max_gen_toks": 4})])
    with pytest.raises(SuiteError, match="context of 512"):
        lm.loglikelihood([_Request("word " * 600, " Yes")])
    with pytest.raises(SuiteError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([_Request("text")])
    with pytest.raises(SuiteError, match="unknown argument.*max_length"):
        SuiteLM(tiny_local_model(), max_length=3)


def test_registered_with_lm_eval_and_scores_as_the_engine():
    from lm_eval.api.registry import get_model

    assert get_model("suite") is SuiteLM
    model = tiny_local_model()
    lm = SuiteLM(model)
    context = model.render([{"role": "user", "content": "Is it? Answer Yes or No."}], "So the answer is")
    (score, greedy), = lm.loglikelihood([_Request(context, " Yes")])
    expected = model.choice_loglikelihoods([model.encode(context)], [model.answer_ids("So the answer is", " Yes")])
    assert score == pytest.approx(expected[0][0], abs=1e-5) and isinstance(greedy, bool)
    text, = lm.generate_until([_Request(context, {"until": ["\n"], "max_gen_toks": 5})])
    from model_engine.backend import GenerationParams

    assert text == model.complete([context], GenerationParams(max_new_tokens=5, stop=("\n",)))[0].text


def test_one_token_choices_after_a_generated_context_are_read_from_its_first_step():
    """The answer pass asks for the choices after the contexts it just generated from: no second forward pass."""
    model = tiny_model_with_smollm2_tokenizer()  # SmolLM2's tokenizer: " Yes" and " No" are one token each
    contexts = [model.render([{"role": "user", "content": p}], "So the answer is") for p in ("Yes or No?", "Is it?")]
    expected = SuiteLM(model).loglikelihood([_Request(c, choice) for c in contexts for choice in (" Yes", " No")])
    lm = SuiteLM(model)
    lm.generate_until([_Request(c, {"until": ["\n"], "max_gen_toks": 2}) for c in contexts])
    model.loglikelihoods = lambda pairs: pytest.fail(f"a forward pass for {len(pairs)} pairs")
    scored = lm.loglikelihood([_Request(c, choice) for c in contexts for choice in (" Yes", " No")])
    assert [greedy for _, greedy in scored] == [greedy for _, greedy in expected]
    assert [score for score, _ in scored] == pytest.approx([score for score, _ in expected], abs=1e-4)


def test_lm_eval_builds_it_from_its_command_line_arguments():
    """What ``lm_eval --model suite --model_args pretrained=...`` does, with the CLI's own extra arguments."""
    lm = SuiteLM.create_from_arg_string("pretrained=smollm2-135m,dtype=float32",
                                        {"batch_size": "auto", "max_batch_size": None, "device": None})
    assert lm.engine.spec.name == "smollm2-135m" and lm.engine.batch_size == 64
    assert SuiteLM.create_from_arg_string("pretrained=smollm2-135m", {"batch_size": 8}).engine.batch_size == 8
    with pytest.raises(SuiteError, match="pretrained"):
        SuiteLM.create_from_arg_string("dtype=float32")
