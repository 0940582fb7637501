"""How much signal GReaTer's gradient carries on a small model, and whether selection can see it.

At several positions of the initial prompt, every token the proposal offers is scored
for real: the prompt with that token is rolled out afresh on the train rows and its
gradient loss (answer cross-entropy / tau + lambda x prompt NLL) and training error are
measured. Reported per position and on average:

- the Spearman rank correlation between the gradient's predicted change (the one-hot
  gradient) and the true change of the loss;
- the gradient's top-3 against 3 random candidates (the mean over all) and the best 3:
  the share of the random-to-best gap the gradient's choice captures;
- the training error of every candidate, over the full vocabulary (the reference) and
  among the valid answers only (``restricted_error``): whether the selection objective
  can tell candidates apart at all.

Writes results/benchmarks/greater_signal_<model>_<task>.json.
    python -m benchmarks.greater_signal [--model smollm2-135m] [--task navigate] [--positions 0 2 4 6 8]
        [--n-train 8] [--max-reasoning-tokens 128] [--extractor dollar]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

import tasks  # noqa: E402
from model_engine.local import load_model  # noqa: E402
from optimizers.base import Budget, get_optimizer  # noqa: E402
from optimizers.contract import RunContext, Terms  # noqa: E402
from optimizers.greater_gradient import GradientSearch  # noqa: E402
from optimizers.run import Run  # noqa: E402

log = logging.getLogger("benchmarks.greater_signal")
TOP = 3


def spearman(xs: list[float], ys: list[float]) -> float | None:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):  # average ranks over ties
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    if len(xs) < 3 or statistics.pstdev(rx) == 0 or statistics.pstdev(ry) == 0:
        return None
    return statistics.correlation(rx, ry)


def search_for(model, task: str, n_train: int, limit: int, extractor: str, restricted: bool) -> GradientSearch:
    greater = get_optimizer("greater")(n_train=n_train, restricted_error=restricted)
    run = Run(greater, RunContext(data=tasks.load_task_data(task), task_model=model, budget=Budget(None),
                                  terms=Terms(max_reasoning_tokens=limit, extractor=extractor)))
    return GradientSearch(greater.options, run)


def position_signal(search: GradientSearch, restricted: GradientSearch | None, prompt: list[int], pos: int) -> dict:
    (reasoning,) = search.rollouts([prompt])
    candidates, _ = search.propose(prompt, pos)
    predicted = search.gradient_scores(prompt, pos, candidates, reasoning).tolist()
    prompts = [prompt[:pos] + [c] + prompt[pos + 1:] for c in candidates]
    scored = search.evaluate(prompts, prompt)
    lam = search.o.perplexity_weight
    loss = [r["answer_loss"] + lam * r["perplexity"] for r in scored]
    current = loss[candidates.index(prompt[pos])]
    change = [value - current for value in loss]
    by_gradient = sorted(range(len(candidates)), key=lambda j: predicted[j])[:TOP]
    best = sorted(change)[:TOP]
    mean_all = statistics.fmean(change)
    gradient_top = statistics.fmean(change[j] for j in by_gradient)
    gap = mean_all - statistics.fmean(best)
    restricted_errors = None
    if restricted is not None:
        restricted.rollout_memory = search.rollout_memory  # the same rollouts, decided among the valid answers
        restricted_errors = [r["train_error"] for r in restricted.evaluate(prompts, prompt)]
    return {
        "position": pos, "candidates": [search.tokenizer.decode([c]) for c in candidates],
        "predicted": predicted, "loss_change": change,
        "spearman": spearman(predicted, change),
        "gradient_top3_change": gradient_top, "random3_change": mean_all, "best3_change": statistics.fmean(best),
        "captured": (mean_all - gradient_top) / gap if gap > 0 else None,
        "train_error": [r["train_error"] for r in scored], "restricted_train_error": restricted_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="navigate")
    parser.add_argument("--positions", nargs="+", type=int, default=[0, 2, 4, 6, 8])
    parser.add_argument("--n-train", type=int, default=8)
    parser.add_argument("--max-reasoning-tokens", type=int, default=128)
    parser.add_argument("--extractor", default="dollar")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    random.seed(0)
    model = load_model(args.model)
    model.cache = None
    search = search_for(model, args.task, args.n_train, args.max_reasoning_tokens, args.extractor, False)
    closed = search.task.choices(args.extractor) is not None
    restricted = search_for(model, args.task, args.n_train, args.max_reasoning_tokens, args.extractor, True) if closed else None
    prompt = search._segment(Terms().initial_prompt)
    started, rows = time.perf_counter(), []
    print(f"{'pos':>3} {'cands':>5} {'spearman':>8} {'grad3':>7} {'rand3':>7} {'best3':>7} {'captured':>8} "
          f"{'err(full)':>9} {'err(valid)':>10}")
    for pos in [p for p in args.positions if p < len(prompt)]:
        r = position_signal(search, restricted, prompt, pos)
        rows.append(r)
        valid = "-" if r["restricted_train_error"] is None else f"{statistics.fmean(r['restricted_train_error']):.2f}"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{pos:3d} {len(r['candidates']):5d} {fmt(r['spearman']):>8} {r['gradient_top3_change']:7.3f} "
              f"{r['random3_change']:7.3f} {r['best3_change']:7.3f} {fmt(r['captured']):>8} "
              f"{statistics.fmean(r['train_error']):9.2f} {valid:>10}", flush=True)
    correlations = [r["spearman"] for r in rows if r["spearman"] is not None]
    captured = [r["captured"] for r in rows if r["captured"] is not None]
    summary = {"mean_spearman": statistics.fmean(correlations) if correlations else None,
               "mean_captured": statistics.fmean(captured) if captured else None,
               "distinct_full_errors": len({e for r in rows for e in r["train_error"]}),
               "distinct_restricted_errors": len({e for r in rows for e in (r["restricted_train_error"] or [])}),
               "seconds": time.perf_counter() - started}
    print(json.dumps(summary))
    output = Path(args.output or f"results/benchmarks/greater_signal_{args.model}_{args.task}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": vars(args), "summary": summary, "positions": rows}, indent=1))
    log.info("wrote %s", output)


if __name__ == "__main__":
    main()
