"""Engine vs plain batch-1 generate on a GPU, with a SmolLM2-shaped random Llama.

For machines without the offline weights (a lent GPU): the body has SmolLM2-135M's
shape (30 layers, hidden 576), random weights, and the tests' tiny tokenizer, so no
file is needed. Prints tokens/s; rows never stop early (min_new_tokens semantics by
an EOS the random model never picks).
    PYTHONPATH=. python benchmarks/engine_gpu_shape.py
"""

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model_engine import GenerationParams
from model_engine.local import from_pretrained_objects
from model_engine.registry import ModelSpec
from tests.conftest import build_tiny_tokenizer

NEW_TOKENS, QUESTIONS = 128, 64


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    for dtype in ("float32", "bfloat16"):
        model = LlamaForCausalLM(config).to(device, getattr(torch, dtype))
        with torch.no_grad():  # never pick EOS, so every row generates NEW_TOKENS tokens
            model.lm_head.weight[tokenizer.eos_token_id].fill_(-1.0)
            model.model.norm.weight.abs_()
        engine = from_pretrained_objects(ModelSpec(f"shape-{dtype}", "none"), model, tokenizer, dtype=dtype)
        prompts = [f"the quick brown fox {i} jumps over the lazy dog " * (1 + i % 5) for i in range(QUESTIONS)]
        ids = torch.tensor([engine.encode(engine.render([{"role": "user", "content": prompts[0]}]))], device=device)
        model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)  # warm-up
        started = time.perf_counter()
        for prompt in prompts[:4]:
            ids = torch.tensor([engine.encode(engine.render([{"role": "user", "content": prompt}]))], device=device)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=engine.pad_id)
        if device == "cuda":
            torch.cuda.synchronize()
        plain = 4 * NEW_TOKENS / (time.perf_counter() - started)
        for batch_size in (16, 64):
            engine.batch_size = batch_size
            before = engine.meter.total
            engine.chat([p + f" {batch_size}" for p in prompts], GenerationParams(max_new_tokens=NEW_TOKENS))
            spent = engine.meter.total - before
            speed = spent.completion_tokens / spent.seconds
            print(f"{device} {dtype}: plain batch-1 {plain:.0f} tokens/s; engine batch {batch_size} "
                  f"{speed:.0f} tokens/s ({speed / plain:.1f}x), {spent.completion_tokens} tokens")


if __name__ == "__main__":
    main()
