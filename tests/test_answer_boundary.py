"""One answer boundary: the token ids GReaTer trains on, the ids the harness feeds and
the ids lm-eval's ``hf`` model receives in the answer pass are the same, for every
answer format, every extractor variant and chat templates that keep or trim the
assistant turn (and a base model's plain layout).

The models are tiny and random, with SmolLM2's real tokenizer (its byte-level BPE is
what the embedded default runs), so the comparison is about tokenization, not skill.
"""

from __future__ import annotations

import pytest

import tasks
from optimizers.base import Budget
from optimizers.contract import RunContext, Terms
from tests.conftest import tiny_model_with_smollm2_tokenizer

# Llama-3's template trims every message (so a trailing space in the assistant turn is lost)
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_STYLE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant'"
    " else message['role']) + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
TEMPLATES = {"smollm2": "own", "llama3-style": LLAMA3_STYLE, "gemma-style": GEMMA_STYLE, "base": None}
#: one task per answer format; folio's "Uncertain" is two tokens (the second-pass likelihood)
FORMATS = {"label": "navigate", "multiple_choice": "date_understanding", "integer": "object_counting",
           "free_text": "word_sorting", "multi_token_label": "folio"}


def greater_target(model, task_name: str, variant: str):
    """GReaTer's training target for the first train row: (extractor ids, answer ids)."""
    from optimizers.greater import Greater
    from optimizers.greater_gradient import GradientSearch
    from optimizers.run import Run

    greater = Greater(n_train=1, steps=1, reuse_prefix_cache=False)
    run = Run(greater, RunContext(data=tasks.load_task_data(task_name), task_model=model, budget=Budget(None),
                                  terms=Terms(max_reasoning_tokens=3, n_dev=2, extractor=variant)))
    example = GradientSearch(greater.options, run).examples[0]
    return run, example.target[:example.answer_start], example.target[example.answer_start:]


def harness_ids(run, monkeypatch):
    """What the harness feeds after the reasoning, and the ids of each choice it scores."""
    model, seen = run.model, {}
    generate_rows, loglikelihoods = model._generate_rows, model.choice_loglikelihoods

    def spy_rows(rows, params, prefix_cache, followup=None):
        if followup is not None:
            seen["followup"] = followup
        return generate_rows(rows, params, prefix_cache, followup)

    def spy_choices(contexts, choices):
        seen["contexts"], seen["choices"] = contexts, choices
        return loglikelihoods(contexts, choices)

    monkeypatch.setattr(model, "_generate_rows", spy_rows)
    monkeypatch.setattr(model, "choice_loglikelihoods", spy_choices)
    run.harness.evaluate("Let's think step by step.", run.train[:1])
    return seen


def lm_eval_ids(model, task, example, variant, tmp_path):
    """The answer pass as lm-eval's ``hf`` model runs it: contexts it encodes, likelihood requests it scores."""
    from lm_eval.models.huggingface import HFLM

    from evaluation.lmeval import PromptCell, evaluate_cells
    from tasks.prompt_slot import PLAIN_STOP

    lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=4, device="cpu")
    encoded, requests = [], []
    tok_batch_encode, loglikelihood_tokens = lm.tok_batch_encode, lm._loglikelihood_tokens

    def spy_encode(strings, *args, **kwargs):
        input_ids, mask = tok_batch_encode(strings, *args, **kwargs)
        encoded.extend((s, ids[m.bool()].tolist()) for s, ids, m in zip(strings, input_ids, mask))
        return input_ids, mask

    def spy_loglikelihood(batch, *args, **kwargs):
        requests.extend(batch)
        return loglikelihood_tokens(batch, *args, **kwargs)

    lm.tok_batch_encode, lm._loglikelihood_tokens = spy_encode, spy_loglikelihood
    evaluate_cells(lm, task, [example], [PromptCell("cell", "Let's think step by step.")], tmp_path, 3,
                   extractor=task.extractor(variant), chat=model.uses_chat_template, response_cache=None)
    assert model.uses_chat_template or model.reasoning_stop == PLAIN_STOP
    extractor_text = task.extractor(variant).text
    answer_contexts = [(s, ids) for s, ids in encoded if s.rstrip().endswith(extractor_text.rstrip())]
    return lm, answer_contexts, requests


CASES = [(f, t, "dollar") for f in FORMATS for t in TEMPLATES] + [
    (f, "smollm2", v) for f in FORMATS for v in ("gemma2", "plain")]


@pytest.mark.parametrize("answer_format, template, variant", CASES)
def test_training_harness_and_lm_eval_read_the_answer_at_the_same_tokens(answer_format, template, variant,
                                                                         monkeypatch, tmp_path):
    task_name = FORMATS[answer_format]
    model = tiny_model_with_smollm2_tokenizer(TEMPLATES[template])
    run, extractor_ids, answer_ids = greater_target(model, task_name, variant)
    task, example = run.task, run.train[0]
    gold = task.answer_format.canonical(example.gold)

    # the harness: the extractor it feeds after the reasoning, and the gold answer's choice ids
    seen = harness_ids(run, monkeypatch)
    assert seen["followup"].after_reasoning == extractor_ids
    choices = task.choices(variant)
    if choices is not None:
        gold_index = task.answer_format.options.index(gold)
        if seen["followup"].choice_tokens is not None:  # one-token choices, read in the fused pass
            assert [seen["followup"].choice_tokens[gold_index]] == answer_ids
        else:
            assert list(seen["choices"][gold_index]) == answer_ids
            assert all(list(c[-len(extractor_ids):]) == extractor_ids for c in seen["contexts"])

    # lm-eval: the answer pass's context ends with the same extractor ids, and the gold
    # answer continues it with the same ids
    lm, answer_contexts, requests = lm_eval_ids(model, task, example, variant, tmp_path)
    assert answer_contexts, "lm-eval's answer pass was not seen"
    for text, ids in answer_contexts:
        assert ids[-len(extractor_ids):] == extractor_ids, (text[-80:], ids[-len(extractor_ids):], extractor_ids)
        assert lm._encode_pair(text, task.target_text(example.gold, variant))[1] == answer_ids
    if choices is not None:
        gold_requests = [r for r in requests if r[0][1] == task.target_text(example.gold, variant)]
        assert gold_requests, "lm-eval scored no likelihood for the gold answer"
        for _, context_ids, continuation_ids in gold_requests:
            assert list(context_ids[-len(extractor_ids):]) == extractor_ids
            assert list(continuation_ids) == answer_ids
