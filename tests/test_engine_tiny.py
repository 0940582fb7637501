"""The local engine on tiny random models built from a config (no download)."""

import multiprocessing

import pytest
import torch

from model_engine import GenerationCache, GenerationParams
from tests.conftest import tiny_local_model

PROMPTS = [
    "how many apples are left?",
    "the quick brown fox",
    "Question: the lazy dog jumps over the quick brown fox and then over the apples",
    "Yes or No?",
    "0 1 2 3",
]


def _reference_greedy(model, text: str, max_new_tokens: int) -> list[int]:
    """Plain batch-1 ``model.generate``: what the engine must reproduce."""
    ids = torch.tensor([model.encode(text)])
    out = model.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.eos_ids,
        pad_token_id=model.pad_id,
    )[0, ids.shape[1]:].tolist()
    return [t for t in out if t not in model.eos_ids]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_greedy_equals_plain_generate(batch_size):
    model = tiny_local_model(batch_size=batch_size)
    params = GenerationParams(max_new_tokens=12)
    completions = model.chat(PROMPTS, params)
    for prompt, completion in zip(PROMPTS, completions):
        expected = _reference_greedy(model, model.render([{"role": "user", "content": prompt}]), 12)
        assert completion.text == model.tokenizer.decode(expected, skip_special_tokens=True)
        assert completion.prompt_tokens == len(model.encode(model.render([{"role": "user", "content": prompt}])))


def test_max_new_tokens_and_finish_reason(tiny_model):
    completions = tiny_model.chat(PROMPTS, GenerationParams(max_new_tokens=3))
    for completion in completions:
        assert completion.completion_tokens <= 3
        assert completion.finish_reason in ("stop", "length")
    assert any(c.finish_reason == "length" and c.completion_tokens == 3 for c in completions)


def test_stop_strings_cut_the_text(tiny_model):
    free = tiny_model.chat(PROMPTS, GenerationParams(max_new_tokens=20))
    # Choose a stop string from what the model really writes, then ask again.
    sample = next(c.text for c in free if len(c.text) > 6)
    stop = sample[3:6]
    stopped = tiny_model.chat(PROMPTS, GenerationParams(max_new_tokens=20, stop=(stop,)))
    for before, after in zip(free, stopped):
        assert stop not in after.text
        assert before.text.startswith(after.text)
    assert any(c.finish_reason == "stop" and c.text == sample[: sample.find(stop)] for c in stopped)


def test_cache_hits_are_identical_and_not_charged(tmp_path):
    cache = GenerationCache(tmp_path / "cache.sqlite")
    model = tiny_local_model(cache=cache)
    params = GenerationParams(max_new_tokens=8)
    first = model.chat(PROMPTS, params)
    charged = model.meter.total
    assert charged.calls == len(PROMPTS) and charged.cached_calls == 0
    assert charged.completion_tokens == sum(c.completion_tokens for c in first) > 0
    second = model.chat(PROMPTS, params)
    assert second == first and all(c.cached for c in second)
    after = model.meter.total
    assert after.calls == charged.calls and after.completion_tokens == charged.completion_tokens
    assert after.cached_calls == len(PROMPTS)
    # the work the hits stand for is counted apart, so a warm run reports the same tokens as a cold one
    assert (after.cached_prompt_tokens, after.cached_completion_tokens) == (charged.prompt_tokens,
                                                                          charged.completion_tokens)
    # Other decoding parameters are another key.
    model.chat(PROMPTS[:1], GenerationParams(max_new_tokens=9))
    assert model.meter.total.calls == charged.calls + 1


def test_cache_key_separates_models(tmp_path):
    cache = GenerationCache(tmp_path / "cache.sqlite")
    a = tiny_local_model(seed=0, cache=cache)
    b = tiny_local_model(seed=1, cache=cache)
    a.chat(PROMPTS[:2], GenerationParams(max_new_tokens=5))
    b.chat(PROMPTS[:2], GenerationParams(max_new_tokens=5))
    assert b.meter.total.calls == 2 and len(cache) == 4


def _write_entries(args):
    path, worker = args
    cache = GenerationCache(path)
    for round_ in range(40):
        cache.put_many({f"k{worker}-{round_}-{i}": {"text": "x" * i} for i in range(10)})
        cache.put_many({f"shared-{i}": {"text": "same"} for i in range(10)})
        assert len(cache.get_many([f"k{worker}-{round_}-{i}" for i in range(10)])) == 10
    return worker


def test_cache_is_safe_for_concurrent_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.map(_write_entries, [(path, w) for w in range(4)])) == [0, 1, 2, 3]
    assert len(GenerationCache(path)) == 4 * 40 * 10 + 10


def test_seeded_sampling_is_reproducible_and_samples_differ():
    model = tiny_local_model()
    params = GenerationParams(max_new_tokens=10, temperature=1.0, seed=7)
    first = model.chat(PROMPTS, params)
    assert model.chat(PROMPTS, params) == first
    other = model.chat(PROMPTS, GenerationParams(max_new_tokens=10, temperature=1.0, seed=8))
    assert other != first


def test_plain_layout_for_models_without_chat_template():
    model = tiny_local_model(chat=False)
    assert not model.uses_chat_template
    rendered = model.render([{"role": "user", "content": "2+2?"}], assistant_prefix="Four.")
    assert rendered == "Question: 2+2?\nAnswer: Four."
    assert model.encode(rendered)[0] == model.tokenizer.bos_token_id
    assert len(model.chat(["2+2?"], GenerationParams(max_new_tokens=4))) == 1


def test_chat_template_layout_and_continuation(tiny_model):
    rendered = tiny_model.render([{"role": "user", "content": "hi"}], assistant_prefix="so")
    assert rendered == "<|user|>hi<|end|><|assistant|>so"
    continued = tiny_model.complete([rendered], GenerationParams(max_new_tokens=4))
    assert continued[0].prompt_tokens == len(tiny_model.encode(rendered))


def test_engine_never_needs_weight_gradients(tiny_model):
    assert not any(p.requires_grad for p in tiny_model.model.parameters())


def test_bfloat16_runs():
    model = tiny_local_model(dtype="bfloat16")
    model.model.to(torch.bfloat16)
    assert model.chat(PROMPTS[:2], GenerationParams(max_new_tokens=4))[0].prompt_tokens > 0


@pytest.mark.parametrize("fast", [False, True])
def test_half_precision_on_a_cpu_without_its_instructions_is_named_in_the_log(monkeypatch, caplog, fast):
    import model_engine.local as local

    monkeypatch.setitem(local._FAST_ON_CPU, "bfloat16", lambda: fast)
    with caplog.at_level("WARNING", logger="model_engine.local"):
        tiny_local_model(dtype="bfloat16")
        tiny_local_model()  # float32 is never warned about
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ([] if fast else ["tiny-llama-0-True: bfloat16 on a CPU without bfloat16 instructions runs "
                                         "its matmuls up to 200x slower than float32; set runtime.dtype: float32 "
                                         "on this machine"])


@pytest.mark.parametrize("bias", [False, True])
def test_small_rows_linear_computes_what_pytorch_linear_does(bias):
    from model_engine.local import use_small_rows_linear

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 48, bias=bias))
    layer = net[0]
    inputs = [torch.randn(rows, 1, 32) for rows in range(1, 21)] + [torch.randn(2, 3, 32), torch.randn(5, 32)]
    expected = [layer(x) for x in inputs]
    use_small_rows_linear(net)
    assert "forward" in layer.__dict__
    for x, want in zip(inputs, expected):
        got = layer(x)
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    use_small_rows_linear(net, False)
    assert "forward" not in layer.__dict__


def test_small_rows_linear_only_for_cpu_float32():
    assert tiny_local_model().small_rows_linear
    assert "forward" in tiny_local_model().model.lm_head.__dict__
    assert not tiny_local_model(dtype="bfloat16").small_rows_linear


def test_complete_ids_matches_chat_and_returns_token_ids(tiny_model):
    params = GenerationParams(max_new_tokens=6)
    by_text = tiny_model.chat(PROMPTS[:3], params)
    ids = [tiny_model.encode(tiny_model.render([{"role": "user", "content": p}])) for p in PROMPTS[:3]]
    by_ids = tiny_model.complete_ids(ids, params)
    assert [c.text for c in by_ids] == [c.text for c in by_text]
    for completion in by_ids:
        assert tiny_model.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True) == completion.text
    assert tiny_model.meter.total.calls == 6


def test_token_ids_survive_the_disk_cache(tmp_path):
    model = tiny_local_model(cache=GenerationCache(tmp_path / "c.sqlite"))
    first = model.complete_ids([[1, 5, 9, 12]], GenerationParams(max_new_tokens=5))
    again = model.complete_ids([[1, 5, 9, 12]], GenerationParams(max_new_tokens=5))
    assert again[0].cached and again[0].token_ids == first[0].token_ids and isinstance(again[0].token_ids, tuple)


def test_prefix_cache_generation_equals_full_sequences():
    from model_engine.prefix_cache import PrefixCache, supports

    model = tiny_local_model(batch_size=3)
    assert supports(model.model)
    prefixes = [model.encode(model.render([{"role": "user", "content": p}]))[:-2] for p in PROMPTS]
    suffixes = [[5, 9], [7], [11, 12, 13], [5, 9], [20, 21]]
    prefix_cache = PrefixCache(model, prefixes)
    params = GenerationParams(max_new_tokens=8)
    full = model._generate_encoded([p + s for p, s in zip(prefixes, suffixes)], params)
    reused = model.complete_prefixed(prefix_cache, list(enumerate(suffixes)), params)
    assert [c.token_ids for c in reused] == [c.token_ids for c in full]
    assert [c.prompt_tokens for c in reused] == [len(p) + len(s) for p, s in zip(prefixes, suffixes)]
    with torch.inference_mode():  # the stored last-position logits predict the first suffix token
        ids = torch.tensor([prefixes[2]])
        expected = model.model(input_ids=ids).logits[0, -1].float()
    assert torch.allclose(prefix_cache.last_logits[2], expected, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_chat_and_answer_continues_each_row_as_its_full_sequence_would(batch_size):
    """The fused answer equals greedy decoding of prompt + reasoning tokens + extractor, row by row."""
    model = tiny_local_model(batch_size=batch_size)
    reasoning_params, answer_params = GenerationParams(max_new_tokens=7), GenerationParams(max_new_tokens=5)
    fused = model.chat_and_answer(PROMPTS, reasoning_params, "So the answer is", answer_params)
    plain = model.chat(PROMPTS, reasoning_params)
    assert [c.token_ids for c in fused] == [c.token_ids for c in plain]  # the reasoning is untouched
    for prompt, completion in zip(PROMPTS, fused):
        extractor = model.continuation_ids(" So the answer is" if completion.token_ids else "So the answer is")
        full = model.encode(model.render([{"role": "user", "content": prompt}])) + list(completion.token_ids) + extractor
        (reference,) = model.complete_ids([full], answer_params)
        assert completion.answer.token_ids == reference.token_ids
        ended_by_eos = completion.completion_tokens == len(completion.token_ids) + 1
        # the appended tokens: the reasoning's last token unless it was EOS, then the extractor
        assert completion.answer.prompt_tokens == len(extractor) + (0 if ended_by_eos else 1)
    assert model.chat_and_answer(PROMPTS, reasoning_params, "So the answer is", answer_params) == fused


def test_chat_and_answer_is_cached_with_its_answer(tmp_path):
    model = tiny_local_model()
    model.cache = GenerationCache(tmp_path / "c.sqlite")
    args = (PROMPTS, GenerationParams(max_new_tokens=6), "Answer:", GenerationParams(max_new_tokens=3))
    first = model.chat_and_answer(*args)
    calls = model.meter.total.calls
    again = model.chat_and_answer(*args)
    assert again == first and all(c.cached and c.answer is not None for c in again)
    assert model.meter.total.calls == calls
    other = model.chat_and_answer(PROMPTS, args[1], "Final:", args[3])  # another extractor is another request
    assert model.meter.total.calls == calls + len(PROMPTS) and not any(c.cached for c in other)


def _full_sequence(model, prompt, completion, extractor):
    ids = model.continuation_ids(f" {extractor}" if completion.token_ids else extractor)
    return model.encode(model.render([{"role": "user", "content": prompt}])) + list(completion.token_ids) + ids


@pytest.mark.parametrize("batch_size", [1, 5])
def test_choice_logprobs_are_the_likelihoods_of_each_choice_after_the_extractor(batch_size):
    """One-token choices read in the fused pass and longer ones in a second pass equal a
    teacher-forced forward over prompt + reasoning + extractor + choice."""
    model = tiny_local_model(batch_size=batch_size)
    reasoning, answer = GenerationParams(max_new_tokens=6), GenerationParams(max_new_tokens=3)
    one_token = [" the", " apples", "A"]  # one token each with the tiny tokenizer
    longer = [" the", " the dog", " Yes"]
    assert all(len(model.answer_ids("is", c)) == 1 for c in one_token) and len(model.answer_ids("is", longer[1])) > 1
    for choices in (one_token, longer):
        done = model.chat_and_answer(PROMPTS, reasoning, "So the answer is", answer, choices=choices)
        for prompt, completion in zip(PROMPTS, done):
            full = _full_sequence(model, prompt, completion, "So the answer is")
            with torch.inference_mode():
                expected = []
                for choice in choices:
                    ids = model.answer_ids("So the answer is", choice)
                    log_probs = torch.log_softmax(model.model(input_ids=torch.tensor([full + ids])).logits[0].float(), -1)
                    expected.append(sum(float(log_probs[len(full) - 1 + k, t]) for k, t in enumerate(ids)))
            assert completion.answer.choice_logprobs == pytest.approx(expected, abs=1e-3)


def test_reasoning_cut_at_a_stop_string_is_answered_from_the_text_before_it():
    """A base model's reasoning ends at the next "Question:"; what follows the stop string is
    never seen by the answer, which is read after the reasoning's kept tokens + extractor."""
    model = tiny_local_model(chat=False)
    free = model.chat(PROMPTS[:3], GenerationParams(max_new_tokens=12))
    stop = free[0].text[len(free[0].text) // 2:][:3]  # something row 0 is sure to write
    reasoning = GenerationParams(max_new_tokens=12, stop=(stop,))
    answer = GenerationParams(max_new_tokens=4)
    done = model.chat_and_answer(PROMPTS[:3], reasoning, "So the answer is", answer, choices=[" the", " apples"])
    assert done[0].finish_reason == "stop" and stop not in done[0].text
    for prompt, completion in zip(PROMPTS[:3], done):
        kept = model.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        assert completion.text.startswith(kept) and stop not in kept
        full = _full_sequence(model, prompt, completion, "So the answer is")
        (reference,) = model.complete_ids([full], answer)
        assert completion.answer.token_ids == reference.token_ids
        assert completion.answer.choice_logprobs == pytest.approx(
            model.choice_loglikelihoods([full], [model.answer_ids("So the answer is", c) for c in (" the", " apples")])[0], abs=1e-4)


def test_base_models_read_the_plain_layout_and_stop_at_the_next_question():
    model = tiny_local_model(chat=False)
    assert not model.uses_chat_template and model.reasoning_stop == ("\nQuestion:",)
    assert model.render([{"role": "user", "content": "Q?"}], "so Yes") == "Question: Q?\nAnswer: so Yes"
    assert tiny_local_model().reasoning_stop == ()


@pytest.mark.parametrize("batch_size", [1, 5])
def test_preallocated_kv_cache_decodes_as_the_growing_cache(batch_size):
    """Rows that finish at different steps, the fused answer and choices: identical with either cache."""
    model = tiny_local_model(batch_size=batch_size)
    first = model.chat(PROMPTS[:1], GenerationParams(max_new_tokens=9))[0]
    stop = model.tokenizer.decode(first.token_ids[3:4]).strip()  # the first row stops early at this text
    reasoning, answer = GenerationParams(max_new_tokens=9, stop=(stop,)), GenerationParams(max_new_tokens=4)
    runs = {}
    for preallocated in (True, False):
        model.preallocate_kv = preallocated
        runs[preallocated] = (model.chat(PROMPTS, reasoning),
                              model.chat_and_answer(PROMPTS, reasoning, "So the answer is", answer, choices=[" Yes", " No"]))
    assert runs[True] == runs[False]
    assert len({len(c.token_ids) for c in runs[True][0]}) > 1  # rows did finish at different steps


def test_preallocated_layer_holds_what_a_dynamic_layer_holds_and_grows_past_its_plan():
    from transformers.cache_utils import DynamicLayer

    from model_engine.kv_cache import PreallocatedLayer

    torch.manual_seed(0)
    planned, growing = PreallocatedLayer(capacity=4), DynamicLayer()
    steps = [torch.randn(3, 2, 3, 4)] + [torch.randn(3, 2, 1, 4) for _ in range(3)]  # 6 positions > capacity 4
    for step in steps[:2]:
        assert all(torch.equal(a, b) for a, b in zip(planned.update(step, -step), growing.update(step, -step)))
    rows = torch.tensor([0, 2])
    planned.batch_select_indices(rows)
    growing.batch_select_indices(rows)
    for step in steps[2:]:
        assert all(torch.equal(a, b) for a, b in zip(planned.update(step[:2], -step[:2]), growing.update(step[:2], -step[:2])))
    assert planned.get_seq_length() == growing.get_seq_length() == 6
    planned.crop(-2)
    growing.crop(-2)
    assert torch.equal(planned.keys, growing.keys) and planned.get_seq_length() == 4


@pytest.mark.parametrize("batch_size", [1, 3])
def test_an_answer_read_after_the_reasoning_equals_running_its_context(batch_size):
    """The answer read from a row's kept states is the answer to its whole context run afresh: also where
    the context re-tokenizes the reasoning, and where it leaves the reasoning at once (another row's)."""
    model = tiny_local_model(batch_size=batch_size)
    params, answer_params = GenerationParams(max_new_tokens=10), GenerationParams(max_new_tokens=4, stop=("\n",))
    rendered = [model.render([{"role": "user", "content": p}]) for p in PROMPTS[:4]]
    ids = [model.encode(text) for text in rendered]

    def answer_context(sequence, reasoning):
        row = ids.index(sequence)
        if row == 3:
            return None  # no answer for this row
        if row == 2:
            return ids[0] + model.continuation_ids(" So the answer is")
        return model.encode(rendered[row] + reasoning.strip() + " So the answer is")

    completions, next_logprobs, answers = model.complete_ids_and_answers(ids, params, answer_context, answer_params,
                                                                         keep_logprobs=True)
    plain, plain_logprobs = model.complete_ids_with_next_logprobs(ids, params)
    assert [c.text for c in completions] == [c.text for c in plain]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(next_logprobs, plain_logprobs))
    assert answers[3] is None and all(a is not None for a in answers[:3])
    for answered in answers[:3]:
        (expected,), (logprobs,) = model.complete_ids_with_next_logprobs([answered.context], answer_params)
        assert answered.completion.text == expected.text
        assert torch.allclose(answered.next_logprobs, logprobs, atol=1e-4)
        assert 0 < answered.completion.prompt_tokens < len(answered.context)  # the kept states were reused
