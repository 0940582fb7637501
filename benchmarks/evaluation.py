"""Test-split evaluation through the suite's lm-eval model against lm-eval's ``hf``, side by side in one run.

Every backend evaluates the same prompts on the same test rows of one task (both passes:
reasoning, then the answer after the extractor), each in a fresh process of its own, as an
evaluate job runs, with no response cache. Printed per backend: questions per second,
wall seconds, peak resident memory of the process (an evaluate job requests 12 GB), and how
many parsed answers differ from the suite engine's fp32 answers (``hf`` fp32 should
differ in none; ``suite`` bf16 shows what bf16 changes). ``suite:float32:separate`` is the
suite's model with its answer pass run as lm-eval sends it (``answer_with_reasoning=False``)
instead of read during the reasoning.

Writes results/benchmarks/evaluation.json.
    python -m benchmarks.evaluation [--model smollm2-135m] [--task navigate] [--rows 32] [--tokens 128]
        [--backends suite:float32 suite:float32:separate suite:bfloat16 hf:float32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

OUTPUT = Path("results/benchmarks/evaluation.json")
PROMPTS = ["Let's think step by step.", "Read each step, keep count, then answer."]
#: lm-eval's hf at the batch size the evaluate rule gave it before the suite backend
HF_BATCH_SIZE = 32


def run_one(backend: str, dtype: str, model: str, task_name: str, rows: int, tokens: int, batch_size: int, threads: int,
            separate_answer_pass: bool = False) -> dict:
    """One backend in this process: seconds, peak memory, and every parsed answer."""
    import torch

    import tasks
    from evaluation.lmeval import PromptCell, evaluate_cells
    from evaluation.run import build_lm
    from tasks.heldout import load_test_examples

    torch.set_num_threads(threads)
    task = tasks.get_task(task_name)
    examples = load_test_examples(task)[:rows]
    lm, description = build_lm(backend, model, dtype=dtype, batch_size=batch_size)
    if separate_answer_pass:
        lm.answer_with_reasoning = False
    cells = [PromptCell(f"prompt{i}", prompt) for i, prompt in enumerate(PROMPTS)]
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        results = evaluate_cells(lm, task, examples, cells, Path(workdir), tokens, extractor=task.extractor(),
                                 chat=description["chat"], likelihood=True)
        seconds = time.perf_counter() - started
    answers = {name: [s["answer"] for s in result["samples"]] for name, result in results.items()}
    return {"backend": backend + (" (separate answer pass)" if separate_answer_pass else ""), "dtype": dtype,
            "batch_size": batch_size, "seconds": seconds,
            "questions": rows * len(cells), "questions_per_s": rows * len(cells) / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "accuracy": {name: result["accuracy"] for name, result in results.items()}, "answers": answers}


def default_backends() -> list[str]:
    import torch

    from benchmarks.engine import bf16_skip_reason, matmul_peak_gflops

    skip = bf16_skip_reason({"float32": matmul_peak_gflops(torch.float32),
                             "bfloat16": matmul_peak_gflops(torch.bfloat16)})
    if skip:
        print(f"suite:bfloat16: {skip}")
    return ["suite:float32", "suite:float32:separate"] + ([] if skip else ["suite:bfloat16"]) + ["hf:float32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="navigate")
    parser.add_argument("--rows", type=int, default=32, help="test rows per prompt")
    parser.add_argument("--tokens", type=int, default=128, help="reasoning limit")
    parser.add_argument("--batch-size", type=int, default=64, help="the suite backend's batch size")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: suite:float32 suite:float32:separate suite:bfloat16 hf:float32, without "
                             "suite:bfloat16 on a CPU whose bf16 matmuls are slower than its fp32 ones")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one backend, print JSON
    args = parser.parse_args()
    if args.one:
        backend, dtype, *variant = args.one.split(":")
        batch = HF_BATCH_SIZE if backend == "hf" else args.batch_size
        print(json.dumps(run_one(backend, dtype, args.model, args.task, args.rows, args.tokens, batch, args.threads,
                                 separate_answer_pass=variant == ["separate"])))
        return

    if args.backends is None:
        args.backends = default_backends()
    runs = []
    for spec in args.backends:
        command = [sys.executable, "-m", "benchmarks.evaluation", "--one", spec, "--model", args.model, "--task", args.task,
                   "--rows", str(args.rows), "--tokens", str(args.tokens), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{spec} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    reference = next((r for r in runs if r["backend"] == "suite" and r["dtype"] == "float32"), runs[0])
    print(f"{args.model} on {args.task}: {args.rows} test rows x {len(PROMPTS)} prompts, reasoning limit {args.tokens}, "
          f"{args.threads} threads")
    print(f"{'backend':34} {'dtype':9} {'batch':>5} {'seconds':>8} {'q/s':>6} {'vs hf':>6} {'peak GB':>7} "
          f"{'answers changed':>15}")
    hf = next((r for r in runs if r["backend"] == "hf"), None)
    for run in runs:
        changed = sum(a != b for name in run["answers"] for a, b in zip(run["answers"][name], reference["answers"][name]))
        run["answers_changed_vs_suite_fp32"] = changed
        run["speedup_vs_hf"] = run["questions_per_s"] / hf["questions_per_s"] if hf else None
        print(f"{run['backend']:34} {run['dtype']:9} {run['batch_size']:5d} {run['seconds']:8.1f} "
              f"{run['questions_per_s']:6.2f} {run['speedup_vs_hf'] or 0:5.2f}x {run['peak_rss_gb']:7.2f} "
              f"{changed:>7d} of {run['questions']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": {"cores": os.cpu_count(), "threads": args.threads,
                                                   "platform": platform.platform()},
                                       "model": args.model, "task": args.task, "rows": args.rows, "tokens": args.tokens,
                                       "runs": runs}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
