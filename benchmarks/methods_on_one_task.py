"""One run per method on one BBH task with SmolLM2 (optimizer and task model), equal budget.

Prints and writes (results/benchmarks/methods_<task>.json) a table: dev accuracy of the
chosen prompt, task calls, optimizer calls, seconds. Every method gets the same task-call
budget and runs until it is spent (matched-budget mode).
    python -m benchmarks.methods_on_one_task [--task navigate] [--budget 200] [--n-dev 16]
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
from model_engine.local import load_model  # noqa: E402
from optimizers.base import Budget, get_optimizer, optimizer_names  # noqa: E402
from optimizers.contract import RunContext, Terms  # noqa: E402
from optimizers.harness import Harness  # noqa: E402


def method_options(optimizer_tokens: int) -> dict[str, dict]:
    """Each method's own small test options, with long schedules: the budget ends every run."""
    options = {}
    for name in optimizer_names():
        optimizer = get_optimizer(name)
        schedule = {key: 1000 for key in ("steps", "rounds", "epochs", "resample_rounds") if key in optimizer.Options.model_fields}
        tokens = {"max_tokens": optimizer_tokens} if "max_tokens" in optimizer.Options.model_fields else {}
        options[name] = {**optimizer.test_options, **schedule, **tokens}
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="navigate")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budget", type=int, default=200, help="task calls per method")
    parser.add_argument("--n-dev", type=int, default=16)
    parser.add_argument("--reasoning-tokens", type=int, default=96)
    parser.add_argument("--optimizer-tokens", type=int, default=96)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    model.cache = None  # every method pays for its own work
    data = tasks.load_task_data(args.task)
    dev = data.dev[: args.n_dev]
    rows = []
    terms = Terms(n_dev=args.n_dev, max_reasoning_tokens=args.reasoning_tokens)
    for name, options in method_options(args.optimizer_tokens).items():
        if args.methods and name not in args.methods:
            continue
        budget = Budget(args.budget)
        started = time.perf_counter()
        context = RunContext(data=data, task_model=model, budget=budget, terms=terms, seed=args.seed)
        result = get_optimizer(name)(**options).optimize(context).model_dump(mode="json")
        seconds = time.perf_counter() - started
        chosen = next((c for c in (result["selection"] or {}).get("candidates", []) if c["prompt"] == result["prompt"]), None)
        accuracy = chosen["dev_accuracy"] if chosen and chosen["dev_accuracy"] is not None else None
        if accuracy is None:  # zero-shot CoT spends nothing: score it outside its budget for the table
            accuracy = Harness(data.task, model, Budget(None), args.reasoning_tokens).evaluate(result["prompt"], dev).accuracy
        rows.append({"method": name, "dev_accuracy": accuracy, "task_calls": result["budget"]["task_calls"],
                     "optimizer_calls": result["budget"]["optimizer_calls"], "seconds": seconds,
                     "stopped": result["stopped"]["reason"], "prompt": result["prompt"]})
        print(json.dumps(rows[-1]), flush=True)
    header = f"| method | dev accuracy ({len(dev)} rows) | task calls | optimizer calls | seconds | prompt |"
    lines = [header, "|---|---|---|---|---|---|"] + [
        f"| {r['method']} | {r['dev_accuracy']:.3f} | {r['task_calls']} | {r['optimizer_calls']} | {r['seconds']:.0f} | "
        f"{r['prompt'][:60]!r} |" for r in rows]
    print("\n".join(lines))
    output = Path(f"results/benchmarks/methods_{args.task}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"task": args.task, "model": args.model, "budget": args.budget, "n_dev": len(dev),
                                  "cores": os.cpu_count(), "rows": rows, "table": lines}, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
