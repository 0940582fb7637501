"""The answer step of zero-shot CoT on the embedded models, per extractor variant and reasoning limit.

For each model x task x extractor variant x reasoning limit, the shared harness runs
"Let's think step by step." on dev rows and reports:

- accuracy of the headline answer (closed answer sets: the valid answer the model finds
  most likely after the extractor; open answers: the written answer, lenient);
- the written answer after the extractor: strict parse rate and accuracy (the answer
  must open the continuation), lenient ones (the parser may fall back to the reasoning);
- the share of reasoning cut by the token limit, and its mean length in tokens;
- the share of the most common gold answer among the rows (what always giving it scores);
- with several ``--dtypes``: per cell, seconds side by side and how many rows' answers (and
  how many rows' correctness) differ from the first dtype's run of the same cell.

Writes results/benchmarks/answer_step.json.
    python -m benchmarks.answer_step [--models smollm2-135m qwen2.5-coder-0.5b]
        [--tasks navigate sports_understanding boolean_expressions] [--variants dollar plain]
        [--limits 64 128 256] [--rows 48] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

import tasks  # noqa: E402
from model_engine.local import load_model  # noqa: E402
from optimizers.base import Budget  # noqa: E402
from optimizers.contract import DEFAULT_INITIAL_PROMPT  # noqa: E402
from optimizers.harness import Harness  # noqa: E402

log = logging.getLogger("benchmarks.answer_step")


def measure(model, task_name: str, variant: str, limit: int, rows: int) -> dict:
    data = tasks.load_task_data(task_name)
    examples = (data.dev + data.train)[:rows]
    harness = Harness(data.task, model, Budget(None), limit, variant)
    started = time.perf_counter()
    evaluation = harness.evaluate(DEFAULT_INITIAL_PROMPT, examples)
    seconds = time.perf_counter() - started
    tokens = [len(model.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in evaluation.reasoning]
    golds = Counter(example.gold for example in examples)
    return {
        "model": model.spec.name, "dtype": model.dtype, "task": task_name, "variant": variant, "limit": limit, "rows": len(examples),
        "majority": golds.most_common(1)[0][1] / len(examples),
        "answer_step": "choice" if harness.choices else "generated", "accuracy": evaluation.accuracy,
        "strict_parse_rate": evaluation.strict_parse_rate, "strict_accuracy": evaluation.strict_accuracy,
        "lenient_parse_rate": evaluation.lenient_parse_rate, "lenient_accuracy": evaluation.lenient_accuracy,
        "truncated": evaluation.truncated, "mean_reasoning_tokens": sum(tokens) / len(tokens), "seconds": seconds,
        "answers": list(evaluation.answers), "correct": list(evaluation.correct),
    }


def differences(result: dict, reference: dict) -> dict:
    """Rows whose answer, and rows whose correctness, differ from the same cell in ``reference``."""
    return {"answers_changed": sum(a != b for a, b in zip(result["answers"], reference["answers"], strict=True)),
            "correct_changed": sum(a != b for a, b in zip(result["correct"], reference["correct"], strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    parser.add_argument("--tasks", nargs="+", default=["navigate", "sports_understanding", "boolean_expressions"])
    parser.add_argument("--variants", nargs="+", default=["dollar", "plain"])
    parser.add_argument("--limits", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--rows", type=int, default=48, help="dev rows (then train rows) per cell")
    parser.add_argument("--dtypes", nargs="+", default=["float32"],
                        help="task-model precisions, side by side in this run (the first is the reference)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="results/benchmarks/answer_step.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    results = []
    header = f"{'model':20} {'task':22} {'variant':7} {'limit':>5} {'acc':>5} {'major':>5} {'strict':>6} {'s.acc':>5} " \
             f"{'lenient':>7} {'l.acc':>5} {'cut':>5} {'tokens':>6} {'s':>5} {'dtype':8} {'changed':>7}"
    print(header)
    for model_name in args.models:
        reference: dict[tuple, dict] = {}
        for dtype in args.dtypes:
            model = load_model(model_name, dtype=dtype)
            model.cache = None
            for task_name in args.tasks:
                for variant in args.variants:
                    for limit in args.limits:
                        r = measure(model, task_name, variant, limit, args.rows)
                        cell = (task_name, variant, limit)
                        r |= differences(r, reference.setdefault(cell, r))
                        results.append(r)
                        print(f"{r['model']:20} {r['task']:22} {r['variant']:7} {r['limit']:5d} {r['accuracy']:5.2f} "
                              f"{r['majority']:5.2f} {r['strict_parse_rate']:6.2f} {r['strict_accuracy']:5.2f} "
                              f"{r['lenient_parse_rate']:7.2f} {r['lenient_accuracy']:5.2f} {r['truncated']:5.2f} "
                              f"{r['mean_reasoning_tokens']:6.0f} {r['seconds']:5.0f} {dtype:8} "
                              f"{r['answers_changed']:3d}/{r['correct_changed']:<3d}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
