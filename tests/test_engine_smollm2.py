"""Integration: the real offline SmolLM2 through the engine (no network)."""

import pytest

import tasks
from model_engine import GenerationParams

pytestmark = pytest.mark.integration


def test_offline_source_is_checked_and_identified(smollm2):
    assert smollm2.prepared.checksum == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert smollm2.prepared.source == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"
    # caches key on the verified weights of the converted folder, not only on the GGUF they came from
    assert len(smollm2.prepared.weights_sha256) == 64
    assert smollm2.identity.startswith(smollm2.prepared.weights_sha256)
    assert smollm2.uses_chat_template
    assert "<|im_start|>user\nhi<|im_end|>" in smollm2.render([{"role": "user", "content": "hi"}])


def test_batched_generation_matches_one_at_a_time(smollm2):
    questions = [e.question for e in tasks.load_task_data("navigate").train[:6]]
    params = GenerationParams(max_new_tokens=48)
    texts = [smollm2.render([{"role": "user", "content": q}]) for q in questions]
    smollm2.batch_size = 6
    batched = smollm2._generate_texts(texts, params)
    smollm2.batch_size = 1
    single = smollm2._generate_texts(texts, params)
    smollm2.batch_size = 64
    # fp32 with left padding differs from batch 1 only by rounding: the texts agree.
    assert [c.text for c in batched] == [c.text for c in single]


def test_reasoning_then_extractor_yields_a_parsable_answer(smollm2):
    """The harness's two steps on a real model: reasoning, then the task's extractor."""
    task = tasks.get_task("navigate")
    examples = tasks.load_task_data(task).train[:4]
    conversations = [[{"role": "user", "content": f"{e.question}\nLet's think step by step."}] for e in examples]
    reasoning = smollm2.chat(conversations, GenerationParams(max_new_tokens=128))
    assert all(r.completion_tokens > 0 for r in reasoning)
    continuations = [
        smollm2.render(conversation, assistant_prefix=f"{r.text.strip()} {task.extractor().text}")
        for conversation, r in zip(conversations, reasoning)
    ]
    answers = smollm2.complete(continuations, GenerationParams(max_new_tokens=4, stop=("\n",)))
    parsed = [task.parse_answer(a.text, r.text) for a, r in zip(answers, reasoning)]
    assert sum(p in ("Yes", "No") for p in parsed) >= 3, [(r.text[-80:], a.text) for a, r in zip(answers, reasoning)]


def test_fused_answer_agrees_with_running_the_conversation_again(smollm2):
    """chat_and_answer (answer from the row's own decoding) vs. the text path lm-eval takes at test time."""
    task = tasks.get_task("navigate")
    examples = tasks.load_task_data(task).train[:8]
    conversations = [[{"role": "user", "content": f"{e.question}\nLet's think step by step."}] for e in examples]
    answer_params = GenerationParams(max_new_tokens=4, stop=("\n",))
    extractor = task.extractor().text
    fused = smollm2.chat_and_answer(conversations, GenerationParams(max_new_tokens=64), extractor, answer_params,
                                    choices=task.choices())
    continuations = [smollm2.render(c, assistant_prefix=f"{r.text.strip()} {extractor}")
                     for c, r in zip(conversations, fused)]
    again = smollm2.complete(continuations, answer_params)
    fused_parsed = [task.parse_answer(r.answer.text, r.text) for r in fused]
    again_parsed = [task.parse_answer(a.text, r.text) for a, r in zip(again, fused)]
    # Only the token boundary after the reasoning (kept as generated vs. retokenized) may differ.
    assert sum(f == a for f, a in zip(fused_parsed, again_parsed)) >= 7, list(zip(fused_parsed, again_parsed))
    choice_ids = [smollm2.answer_ids(extractor, c) for c in task.choices()]
    again_chosen = [task.chosen(lp) for lp in smollm2.choice_loglikelihoods([smollm2.encode(t) for t in continuations], choice_ids)]
    fused_chosen = [task.chosen(r.answer.choice_logprobs) for r in fused]
    assert sum(f == a for f, a in zip(fused_chosen, again_chosen)) >= 7, list(zip(fused_chosen, again_chosen))


@pytest.mark.parametrize("task_name, variant", [("boolean_expressions", "dollar"), ("navigate", "plain")])
def test_strict_and_lenient_filters_on_real_smollm2_outputs(tmp_path, smollm2, task_name, variant):
    """lm-eval's two filter pipelines on SmolLM2's real continuations: strict never reads more than lenient,
    and where the continuation opens with the answer both read the same answer."""
    from lm_eval.models.huggingface import HFLM

    from evaluation.lmeval import PromptCell, evaluate_cells
    from tasks.heldout import load_test_examples

    task = tasks.get_task(task_name)
    examples = load_test_examples(task)[:8]
    lm = HFLM(pretrained=smollm2.model, tokenizer=smollm2.tokenizer, batch_size=8, device="cpu")
    result = evaluate_cells(lm, task, examples, [PromptCell("cot", "Let's think step by step.")], tmp_path, 48,
                            extractor=task.extractor(variant), tokenizer=smollm2.tokenizer)["cot"]
    samples = result["samples"]
    assert result["strict_parse_rate"] <= result["lenient_parse_rate"]
    assert result["strict_parse_rate"] > 0  # real answers were read, not only [invalid]
    for sample in samples:
        opens_with_answer = task.answer_format.parse_strict(sample["continuation"]) is not None
        assert (sample["strict"] != "[invalid]") == opens_with_answer, sample["continuation"]
        if opens_with_answer:
            assert sample["strict"] == sample["lenient"], sample
    assert result["strict_accuracy"] == sum(s["strict"] == s["gold"] for s in samples) / len(samples)


def test_preallocated_kv_cache_gives_the_growing_caches_outputs(smollm2):
    questions = [e.question for e in tasks.load_task_data("navigate").train[:6]]
    params = GenerationParams(max_new_tokens=48)
    texts = [smollm2.render([{"role": "user", "content": q}]) for q in questions]
    outputs = {}
    for preallocated in (True, False):
        smollm2.preallocate_kv = preallocated
        outputs[preallocated] = [c.token_ids for c in smollm2._generate_texts(texts, params)]
    smollm2.preallocate_kv = True
    assert outputs[True] == outputs[False]
