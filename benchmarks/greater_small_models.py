"""GReaTer on the embedded small models: the reference algorithm against its small-model options.

For each model x task, GReaTer runs on the default config's terms and budget
(config/default.yaml: reasoning limit, dev rows, task calls, GReaTer's options) twice:

- ``reference``: the reference's algorithm (training error = argmax over the vocabulary);
- ``small``: ``restricted_error``, ``break_ties_by_answer_loss`` and ``roundtrip_filter`` on.

Reported per run: the training error and loss at every step, whether the chosen prompt
differs from the initial one, its dev accuracy against the initial prompt's (the shared
final choice scores both), and test accuracy of the chosen prompt against zero-shot CoT
(the initial prompt) on the task's test rows, through the harness's answer step (the
same decision lm-eval's multiple_choice pass makes; this benchmark is not an optimizer).

Writes results/benchmarks/greater_small_models.json.
    python -m benchmarks.greater_small_models [--models smollm2-135m] [--tasks navigate ...] [--test-rows 100]
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
import yaml  # noqa: E402

import suite_config  # noqa: E402
import tasks  # noqa: E402
from model_engine.local import load_model  # noqa: E402
from optimizers.base import Budget, get_optimizer  # noqa: E402
from optimizers.contract import RunContext, Terms  # noqa: E402
from optimizers.harness import Harness  # noqa: E402
from tasks.heldout import load_test_examples  # noqa: E402

log = logging.getLogger("benchmarks.greater_small_models")
SETTINGS = {
    "reference": {},
    "small": {"restricted_error": True, "break_ties_by_answer_loss": True, "roundtrip_filter": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/default.yaml")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the config's tasks")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--test-rows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="results/benchmarks/greater_small_models.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    config = suite_config.validate_config(yaml.safe_load(Path(args.config).read_text()))
    terms = Terms(**config["terms"])
    results = []
    for model_name in args.models:
        model = load_model(model_name)
        model.cache = None  # every run pays for its own work
        for task_name in args.tasks or config["tasks"]:
            data = tasks.load_task_data(task_name)
            test = load_test_examples(task_name)[: args.test_rows]
            harness = Harness(data.task, model, Budget(None), terms.max_reasoning_tokens,
                              terms.extractor_for(model_name))
            test_score = {}

            def on_test(prompt: str):
                if prompt not in test_score:
                    test_score[prompt] = harness.evaluate(prompt, test)
                return test_score[prompt]

            def answer_shares(evaluation) -> dict:
                """How often each answer was given: a prompt that only moved the model's preference shows here."""
                return {a: n / len(test) for a, n in Counter(evaluation.answers).most_common()}

            for setting in args.settings:
                options = {**config["optimizers"]["greater"], **SETTINGS[setting]}
                budget = suite_config.budget_for(config, task_name)
                started = time.perf_counter()
                context = RunContext(data=data, task_model=model, terms=terms, seed=config["seeds"][0],
                                     budget=Budget(budget["max_task_calls"], budget["max_optimizer_calls"]))
                result = get_optimizer("greater")(**options).optimize(context)
                seconds = time.perf_counter() - started
                steps = [s.details | {"step": s.step, "prompt": s.prompt} for s in result.trajectory]
                dev = {c.prompt: c.dev_accuracy for c in result.selection.candidates}
                row = {
                    "model": model_name, "task": task_name, "setting": setting, "options": options,
                    "steps": len(steps) - 1, "stopped": result.stopped.reason,
                    "train_error": [s.get("train_error") for s in steps], "loss": [s.get("loss") for s in steps],
                    "answer_loss": [s.get("answer_loss") for s in steps], "prompts": [s["prompt"] for s in steps],
                    "chosen": result.prompt, "changed": result.prompt != terms.initial_prompt,
                    "dev_chosen": dev.get(result.prompt), "dev_initial": dev.get(terms.initial_prompt),
                    "test_chosen": on_test(result.prompt).accuracy,
                    "test_zero_shot_cot": on_test(terms.initial_prompt).accuracy,
                    "test_answers_chosen": answer_shares(on_test(result.prompt)),
                    "test_answers_zero_shot_cot": answer_shares(on_test(terms.initial_prompt)),
                    "test_gold": {g: n / len(test) for g, n in Counter(e.gold for e in test).most_common()},
                    "test_rows": len(test), "seconds": seconds,
                }
                results.append(row)
                print(f"{model_name} {task_name} {setting}: {row['steps']} steps, train error "
                      f"{row['train_error'][0]:.2f} -> {min(row['train_error']):.2f} (best), loss "
                      f"{row['loss'][0]:.3f} -> {row['loss'][-1]:.3f}; chosen {result.prompt!r} "
                      f"(changed: {row['changed']}); dev {row['dev_chosen']:.3f} vs initial {row['dev_initial']:.3f}; "
                      f"test {row['test_chosen']:.3f} vs zero-shot CoT {row['test_zero_shot_cot']:.3f} "
                      f"({len(test)} rows); answers chosen {row['test_answers_chosen']}, zero-shot CoT "
                      f"{row['test_answers_zero_shot_cot']}, gold {row['test_gold']}; {seconds:.0f} s", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"config": args.config, "terms": terms.model_dump(), "results": results},
                                            indent=1))
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
