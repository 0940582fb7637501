"""The engine's GPU path, on tiny random models (skipped where no GPU is present)."""

import pytest
import torch

from model_engine import GenerationParams
from tests.conftest import tiny_local_model
from tests.test_engine_tiny import PROMPTS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_gpu(dtype="float32", **kwargs):
    model = tiny_local_model(dtype=dtype, **kwargs)
    model.model.to("cuda", getattr(torch, dtype))
    model.device = torch.device("cuda")
    return model


def test_batched_greedy_on_gpu_equals_plain_generate():
    model = _on_gpu(batch_size=3)
    completions = model.chat(PROMPTS, GenerationParams(max_new_tokens=10))
    for prompt, completion in zip(PROMPTS, completions):
        text = model.render([{"role": "user", "content": prompt}])
        ids = torch.tensor([model.encode(text)], device="cuda")
        out = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                   do_sample=False, eos_token_id=model.eos_ids, pad_token_id=model.pad_id)
        expected = [t for t in out[0, ids.shape[1]:].tolist() if t not in model.eos_ids]
        assert completion.text == model.tokenizer.decode(expected, skip_special_tokens=True)


def test_gpu_bfloat16_and_seeded_sampling():
    model = _on_gpu(dtype="bfloat16")
    params = GenerationParams(max_new_tokens=8, temperature=0.8, seed=3)
    assert model.chat(PROMPTS, params) == model.chat(PROMPTS, params)
    assert all(c.completion_tokens <= 8 for c in model.chat(PROMPTS, GenerationParams(max_new_tokens=8)))
