"""Engine throughput against plain ``model.generate`` at batch 1, and model-FLOPs utilisation.

Measures, in one run on this machine:
- the matmul peak (GFLOP/s) in fp32 and bf16;
- per model: tokens/s of plain batch-1 ``model.generate`` on a few BBH questions, and of
  the engine (length-sorted batches, finished rows dropped) on 64 BBH questions with
  128 new tokens; the speed-up; the model-FLOPs utilisation (2 x matmul parameters for
  every position the model computed, prompt tokens included, against the peak of the
  dtype) and, beside it, the generated tokens alone against the fp32 peak (the figure
  earlier measurements called MFU: it counts no prompt work, which is most of the FLOPs
  when the prompts are longer than the generations);
- side by side at the largest batch: the preallocated key/value cache against the
  growing one (``model_engine.kv_cache``), and bf16 against fp32 (with how many of the
  64 generations change; left out, saying why, on a CPU whose bf16 matmuls are slower
  than its fp32 ones);
- per model: one decode step at 1-16 rows with the linear layers as PyTorch runs them
  and with the engine's small-rows form (``model_engine.local.SMALL_ROWS``), side by side,
  against the step's physical bound on this machine: reading every weight once at the
  measured memory bandwidth, or the step's matmuls at the fp32 peak, whichever is longer
  (at a few rows a decode step is bound by the bytes of the weights, not by the matmuls).

Results are printed and written to results/benchmarks/engine.json.
    python -m benchmarks.engine [--models smollm2-135m qwen2.5-coder-0.5b] [--batch-sizes 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

import tasks  # noqa: E402
from model_engine import GenerationParams  # noqa: E402
from model_engine.local import load_model, use_small_rows_linear  # noqa: E402

OUTPUT = Path("results/benchmarks/engine.json")
DECODE_ROWS = (1, 2, 3, 4, 6, 8, 12, 16)


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20, seconds: float = 3.0) -> float:
    """The best of ``repeats`` square matmuls, stopping after ``seconds`` (a dtype without fast kernels
    takes seconds a matmul)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - started
        best, spent = min(best, elapsed), spent + elapsed
        if spent > seconds:
            break
    return 2 * size**3 / best / 1e9


def memory_bandwidth_gbs(megabytes: int = 1024, repeats: int = 10) -> float:
    """Read bandwidth (GB/s): the best time to sum a tensor far larger than the caches."""
    data = torch.ones(megabytes * 2**20 // 4)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * data.element_size() / best / 1e9


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every parameter, except an input embedding that is not also the LM
    head (a step reads one row of it per token)."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters()
               if p is not embedding or embedding is head)


def matmul_parameters(model) -> int:
    """Parameters used in a matmul per generated token (all linear layers, LM head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def decode_step_seconds(engine, batch_sizes, context: int, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one greedy one-token decode step at each batch size, with ``context`` cached tokens."""
    from transformers import DynamicCache

    net, seconds = engine.model, {}
    with torch.inference_mode():
        ids = torch.randint(100, 1000, (1, context), device=engine.device)
        for batch in batch_sizes:
            cache = DynamicCache(config=net.config)
            net(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(batch)  # every row the same context: prefill once
            attention = torch.ones((batch, context + 1), dtype=torch.long, device=engine.device)
            positions = torch.full((batch, 1), context, device=engine.device)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                net(input_ids=ids[:, :1].expand(batch, 1), attention_mask=attention, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
                times.append(time.perf_counter() - started)
                cache.crop(-1)
            seconds[batch] = sorted(times)[repeats // 2]
    return seconds


def ragged_bound_tokens_per_s(lengths: list[int], step_seconds: dict[int, float]) -> float:
    """The most tokens/s one-token decoding of rows with these output lengths can reach.

    After the prefill (left out: this is an upper bound) gives each row its first token,
    decode step k runs the rows longer than k, at the measured cost of a step at that
    batch size (linear between measured sizes).
    """
    sizes = sorted(step_seconds)

    def cost(batch: int) -> float:
        above = next((s for s in sizes if s >= batch), sizes[-1])
        below = max((s for s in sizes if s <= batch), default=sizes[0])
        if above == below:
            return step_seconds[above] * (batch / above if batch > above else 1.0)
        share = (batch - below) / (above - below)
        return step_seconds[below] + share * (step_seconds[above] - step_seconds[below])

    seconds = sum(cost(sum(1 for n in lengths if n > k)) for k in range(1, max(lengths, default=0)))
    return sum(lengths) / seconds if seconds else 0.0


def questions(count: int) -> list[str]:
    pool = []
    for name in ("navigate", "date_understanding", "object_counting", "logical_deduction_three_objects"):
        data = tasks.load_task_data(name)
        pool += [f"{e.question}\nLet's think step by step." for e in data.train + data.dev]
    return pool[:count]


def plain_generate_tokens_per_s(engine, prompts: list[str], new_tokens: int) -> tuple[float, int]:
    tokens, seconds = 0, 0.0
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([engine.encode(engine.render([{"role": "user", "content": prompt}]))])
            started = time.perf_counter()
            out = engine.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                do_sample=False, eos_token_id=engine.eos_ids, pad_token_id=engine.pad_id,
            )
            seconds += time.perf_counter() - started
            tokens += out.shape[1] - ids.shape[1]
    return tokens / seconds, tokens


@dataclass(frozen=True)
class EngineRun:
    """One engine generation run: what it generated and what the model computed to do it."""

    generated_tokens: int
    #: positions the model ran: every prompt token and every generated token but each row's last
    computed_tokens: int
    seconds: float
    outputs: list

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds

    def mfu(self, flops_per_token: float, peak_gflops: float) -> float:
        """Model-FLOPs utilisation: the matmul FLOPs of every computed position against the peak."""
        return self.computed_tokens * flops_per_token / self.seconds / (peak_gflops * 1e9)

    def generated_share_of_peak(self, flops_per_token: float, peak_gflops: float) -> float:
        """Generated tokens/s x FLOPs per token against the peak (counts no prompt work)."""
        return self.tokens_per_s * flops_per_token / (peak_gflops * 1e9)


def engine_run(engine, prompts: list[str], new_tokens: int, batch_size: int) -> EngineRun:
    engine.batch_size, engine.cache = batch_size, None
    before = engine.meter.total
    outputs = engine.chat(prompts, GenerationParams(max_new_tokens=new_tokens))
    spent = engine.meter.total - before
    return EngineRun(spent.completion_tokens, spent.prompt_tokens + spent.completion_tokens - spent.calls,
                     spent.seconds, [c.token_ids for c in outputs])


def bf16_skip_reason(peak: dict[str, float]) -> str | None:
    """Why bf16 runs are left out here: a CPU without bf16 instructions runs its matmuls far slower than fp32."""
    if peak["bfloat16"] < peak["float32"]:
        return (f"bf16 left out: its matmul peak here ({peak['bfloat16']:.1f} GFLOP/s) is below fp32's "
                f"({peak['float32']:.1f}); this CPU has no fast bf16 instructions")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--baseline-questions", type=int, default=4, help="questions for plain batch-1 generate")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peak = {"float32": matmul_peak_gflops(torch.float32), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    bandwidth = memory_bandwidth_gbs()
    print(f"matmul peak: fp32 {peak['float32']:.1f} GFLOP/s, bf16 {peak['bfloat16']:.1f} GFLOP/s; memory read "
          f"bandwidth {bandwidth:.1f} GB/s ({args.threads} threads, {os.cpu_count()} cores)")
    bf16_skip = bf16_skip_reason(peak)
    prompts = questions(args.questions)
    report = {"machine": {"cores": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                          "torch": torch.__version__}, "matmul_peak_gflops": peak,
              "memory_bandwidth_gbs": bandwidth, "models": {}}
    for name in args.models:
        engine = load_model(name)
        flops_per_token = 2 * matmul_parameters(engine.model)
        baseline, baseline_tokens = plain_generate_tokens_per_s(engine, prompts[: args.baseline_questions], args.new_tokens)
        print(f"{name}: plain generate, batch 1: {baseline:.1f} tokens/s ({baseline_tokens} tokens)")
        engine_runs, variant_runs = {}, {}
        for batch_size in args.batch_sizes:
            engine_runs[batch_size] = run = engine_run(engine, prompts, args.new_tokens, batch_size)
            print(f"{name}: engine, batch {batch_size}: {run.tokens_per_s:.1f} tokens/s ({run.generated_tokens} "
                  f"tokens in {run.seconds:.1f} s), {run.tokens_per_s / baseline:.2f}x plain")
        best = max(engine_runs, key=lambda b: engine_runs[b].tokens_per_s)
        largest = max(args.batch_sizes)
        for label, preallocate, dtype in (("growing key/value cache, fp32", False, "float32"),
                                          ("preallocated key/value cache, fp32", True, "float32"),
                                          ("preallocated key/value cache, bf16", True, "bfloat16")):
            if dtype == "bfloat16" and bf16_skip:
                print(f"{name}: batch {largest}, {label}: {bf16_skip}")
                continue
            variant_runs[label] = (dtype, engine_run(load_model(name, dtype=dtype, preallocate_kv=preallocate),
                                                     prompts, args.new_tokens, largest))
        # The machine's speed drifts (a shared host: up to 1.5x within an hour here), so every MFU is taken
        # against the best peak measured in the run, before and after this model's generation.
        peak["float32"] = max(peak["float32"], matmul_peak_gflops(torch.float32))
        print(f"{name}: fp32 matmul peak, the best measured so far: {peak['float32']:.1f} GFLOP/s")
        runs = {batch_size: {"tokens_per_s": run.tokens_per_s, "tokens": run.generated_tokens,
                             "computed_tokens": run.computed_tokens, "seconds": run.seconds,
                             "mfu_fp32": run.mfu(flops_per_token, peak["float32"]),
                             "generated_share_of_fp32_peak": run.generated_share_of_peak(flops_per_token,
                                                                                         peak["float32"])}
                for batch_size, run in engine_runs.items()}
        for batch_size, run in runs.items():
            print(f"{name}: engine, batch {batch_size}: MFU {run['mfu_fp32']:.1%} ({run['computed_tokens']} positions "
                  f"computed, prompts included); generated tokens alone {run['generated_share_of_fp32_peak']:.1%} "
                  f"of the fp32 peak")
        variants = {}
        for label, (dtype, run) in variant_runs.items():
            changed = sum(a != b for a, b in zip(run.outputs, engine_runs[largest].outputs))
            variants[label] = {"tokens_per_s": run.tokens_per_s, "seconds": run.seconds, "generations_changed": changed,
                               "mfu": run.mfu(flops_per_token, peak[dtype]),
                               "mfu_vs_fp32_peak": run.mfu(flops_per_token, peak["float32"])}
            print(f"{name}: batch {largest}, {label}: {run.tokens_per_s:.1f} tokens/s, MFU {variants[label]['mfu']:.1%} "
                  f"of the {dtype} peak ({variants[label]['mfu_vs_fp32_peak']:.1%} of fp32's); {changed} of "
                  f"{len(run.outputs)} generations differ from the engine's fp32 run")
        decode_steps = {}
        for small_rows in (False, True):
            use_small_rows_linear(engine.model, small_rows)
            decode_steps["small_rows_linear" if small_rows else "pytorch_linear"] = decode_step_seconds(
                engine, DECODE_ROWS, context=160)
        use_small_rows_linear(engine.model, engine.small_rows_linear)  # as the engine runs
        weights = weight_bytes(engine.model)
        bounds = {rows: max(weights / (bandwidth * 1e9), rows * flops_per_token / (peak["float32"] * 1e9))
                  for rows in DECODE_ROWS}
        for rows in DECODE_ROWS:
            plain, small = decode_steps["pytorch_linear"][rows], decode_steps["small_rows_linear"][rows]
            print(f"{name}: decode step, {rows} rows: {plain * 1000:.0f} ms with PyTorch's linear, "
                  f"{small * 1000:.0f} ms small-rows form ({plain / small:.2f}x); bound {bounds[rows] * 1000:.0f} ms "
                  f"({weights / 1e9:.2f} GB of weights at the bandwidth, or the matmuls at the fp32 peak): the "
                  f"faster form at {bounds[rows] / min(plain, small):.0%} of it")
        report["models"][name] = {
            "matmul_parameters": flops_per_token // 2,
            "plain_generate_batch1_tokens_per_s": baseline,
            "plain_generate_generated_share_of_fp32_peak": baseline * flops_per_token / (peak["float32"] * 1e9),
            "engine": runs,
            "best_batch_size": best,
            "speedup_vs_plain": runs[best]["tokens_per_s"] / baseline,
            "decode_step_seconds": decode_steps,
            "weight_bytes": weights,
            "decode_step_bound_seconds": bounds,
            "batch_variants": variants,
            "target_speedup": 4.0,
        }
        print(f"{name}: best batch {best}: {report['models'][name]['speedup_vs_plain']:.2f}x plain (target 4x)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
