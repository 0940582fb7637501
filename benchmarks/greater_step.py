"""Full GReaTer steps on SmolLM2 (n_train 16, at most 128 reasoning tokens): where the time goes.

Reports, in one run on this machine:
- seconds per step and its phases: proposal, rollouts, gradient, candidate evaluation,
  other (everything outside those: Python bookkeeping, decoding, selection logic);
- task calls per second;
- model-FLOPs utilisation of the step against the matmul peak measured in the same run;
- the rollouts' generation throughput against the engine's best measured throughput
  (64 BBH questions, 128 new tokens, measured before and after the steps, the better
  kept), and against the plain engine path
  (full sequences, no prefix cache) replaying the step's own rollout requests: short,
  ragged rollouts decode the tail of a batch with few rows, which no batching avoids;
- the ragged bound: the most tokens/s that one-token decoding of rows with the step's
  own output lengths can reach, from one-token decode steps timed at each batch size in
  the same run (prefill left out). Rollouts whose lengths run from 1 to 128 tokens
  cannot decode one token per step faster than this, however they are batched.

Targets: "other" under 10% of a step; rollouts at >= 80% of the engine's best.
Results are printed and written to results/benchmarks/greater_step.json.
    python -m benchmarks.greater_step [--steps 3] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

import tasks  # noqa: E402
from benchmarks.engine import (  # noqa: E402
    decode_step_seconds,
    engine_run,
    matmul_parameters,
    matmul_peak_gflops,
    questions,
    ragged_bound_tokens_per_s,
)
from model_engine.local import load_model  # noqa: E402
from optimizers.base import Budget, get_optimizer  # noqa: E402
from optimizers.contract import RunContext, Terms  # noqa: E402
from optimizers.run import Run  # noqa: E402

OUTPUT = Path("results/benchmarks/greater_step.json")
PHASES = ("proposal", "rollouts", "gradient", "evaluation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="navigate")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--max-reasoning-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peak = matmul_peak_gflops(torch.float32 if args.dtype == "float32" else torch.bfloat16)
    model = load_model(args.model, dtype=args.dtype, batch_size=args.batch_size)
    model.cache = None  # measure real work, not cache hits

    def engine_best_now() -> float:
        speed = engine_run(model, questions(64), args.max_reasoning_tokens, args.batch_size).tokens_per_s
        print(f"engine: {speed:.1f} tokens/s (64 questions, batch {args.batch_size}, {args.threads} threads, "
              f"{os.cpu_count()} cores)")
        return speed

    # Measured before and after the steps; the better one is the engine's best (a shared
    # machine's speed drifts, and a slow moment must not flatter the ratios).
    engine_runs = [engine_best_now()]
    print(f"matmul peak ({args.dtype}): {peak:.1f} GFLOP/s")

    greater = get_optimizer("greater")(n_train=args.n_train, steps=args.steps)
    budget = Budget(None)
    shared = Run(greater, RunContext(data=tasks.load_task_data(args.task), task_model=model, budget=budget,
                                     terms=Terms(max_reasoning_tokens=args.max_reasoning_tokens)))
    greater.prepare(shared)
    run = greater.search
    state = greater.start(shared)  # the first rollouts; not part of a step
    prompt = state["prompt"]
    flops_per_token = 2 * matmul_parameters(model.model)
    recorded: list = []  # the rollout requests of the current step, replayed through the plain engine path
    lengths: list[int] = []  # the rollouts' output lengths, for the ragged bound
    original = model.complete_prefixed

    def recording(prefix_cache, rows, params):
        recorded.extend(prefix_cache.prefixes[i] + list(suffix) for i, suffix in rows)
        completions = original(prefix_cache, rows, params)
        lengths.extend(c.completion_tokens for c in completions)
        return completions

    model.complete_prefixed = recording
    # a tail row's typical cached context: its question, the prompt and half the reasoning
    context = sum(len(e.prefix) for e in run.examples) // len(run.examples) + len(prompt) + args.max_reasoning_tokens // 2
    step_seconds = decode_step_seconds(model, (1, 2, 4, 8, 16, 32, 48, 64), context)
    print(f"one-token decode step (s) by batch size, {context} cached tokens: "
          + ", ".join(f"{b}: {t:.3f}" for b, t in step_seconds.items()))
    steps = []
    for _ in range(args.steps):
        recorded.clear()
        lengths.clear()
        phases_before, budget_before = dict(run.phase_seconds), budget.record()
        meter_before = model.meter.total
        started = time.perf_counter()
        shared.step_index += 1
        greater.step(shared, state)
        seconds = time.perf_counter() - started
        phases = {p: run.phase_seconds[p] - phases_before.get(p, 0.0) for p in PHASES}
        phases["other"] = seconds - sum(phases.values())
        generated = model.meter.total - meter_before
        record = budget.record()
        forward = record["forward_tokens"] - budget_before["forward_tokens"]
        backward = record["backward_tokens"] - budget_before["backward_tokens"]
        flops = flops_per_token * (forward + backward + generated.prompt_tokens + generated.completion_tokens)
        task_calls = record["task_calls"] - budget_before["task_calls"]
        rollout_speed = generated.completion_tokens / phases["rollouts"] if phases["rollouts"] else 0.0
        replay_started = time.perf_counter()
        replay = model._generate_encoded(list(recorded), run.reasoning) if recorded else []
        replay_speed = sum(c.completion_tokens for c in replay) / (time.perf_counter() - replay_started) if replay else 0.0
        bound = ragged_bound_tokens_per_s(lengths, step_seconds)
        steps.append({
            "seconds": seconds, "phases": phases, "task_calls": task_calls, "task_calls_per_s": task_calls / seconds,
            "generated_tokens": generated.completion_tokens, "rollout_tokens_per_s": rollout_speed,
            "same_requests_plain_engine_tokens_per_s": replay_speed,
            "ragged_bound_tokens_per_s": bound, "rollouts_vs_ragged_bound": rollout_speed / bound if bound else None,
            "rollout_lengths": sorted(lengths),
            "rollouts_vs_same_requests_plain_engine": rollout_speed / replay_speed if replay_speed else None,
            "mfu": flops / seconds / (peak * 1e9),
            "other_share": phases["other"] / seconds, "prompt": shared.trajectory[-1].prompt,
        })
        s = steps[-1]
        print(f"step {len(steps)}: {seconds:.1f} s | " + ", ".join(f"{p} {v:.1f}" for p, v in phases.items())
              + f" | {task_calls / seconds:.2f} task calls/s | rollouts {rollout_speed:.1f} tok/s (plain engine on "
              f"the same requests {replay_speed:.1f}, ragged bound "
              f"{bound:.1f}) | MFU {s['mfu']:.1%} | other {s['other_share']:.1%}")
    engine_runs.append(engine_best_now())
    engine_best = max(engine_runs)
    for number, s in enumerate(steps, 1):
        s["rollouts_vs_engine_best"] = s["rollout_tokens_per_s"] / engine_best
        s["ragged_bound_vs_engine_best"] = s["ragged_bound_tokens_per_s"] / engine_best
        print(f"step {number}: rollouts at {s['rollouts_vs_engine_best']:.0%} of the engine's best "
              f"({engine_best:.1f} tokens/s); their ragged bound is {s['ragged_bound_vs_engine_best']:.0%} of it")
    mean = lambda key: sum(s[key] for s in steps) / len(steps)  # noqa: E731
    summary = {
        "seconds_per_step": mean("seconds"),
        "phase_seconds": {p: sum(s["phases"][p] for s in steps) / len(steps) for p in (*PHASES, "other")},
        "task_calls_per_s": mean("task_calls_per_s"),
        "mfu": mean("mfu"),
        "other_share": mean("other_share"),
        "rollouts_vs_engine_best": mean("rollouts_vs_engine_best"),
        # all steps' rollout tokens over all their rollout seconds: long steps weigh more
        "all_rollouts_vs_engine_best": sum(s["generated_tokens"] for s in steps)
        / sum(s["phases"]["rollouts"] for s in steps) / engine_best,
        "same_requests_plain_engine_tokens_per_s": mean("same_requests_plain_engine_tokens_per_s"),
        "ragged_bound_vs_engine_best": mean("ragged_bound_vs_engine_best"),
        "rollouts_vs_ragged_bound": mean("rollouts_vs_ragged_bound"),
        "targets": {"other_share_below": 0.10, "rollouts_vs_engine_best_at_least": 0.80},
    }
    print("mean: " + json.dumps(summary))
    report = {"model": args.model, "task": args.task, "dtype": args.dtype, "n_train": args.n_train,
              "max_reasoning_tokens": args.max_reasoning_tokens, "threads": args.threads, "cores": os.cpu_count(),
              "matmul_peak_gflops": peak, "engine_best_tokens_per_s": engine_best,
              "engine_runs_tokens_per_s": engine_runs,
              "decode_step_seconds": {str(b): t for b, t in step_seconds.items()}, "decode_step_context": context,
              "steps": steps, "summary": summary}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
