"""Test-split evaluation of optimized prompts through lm-evaluation-harness.

The suite's scoring protocol takes two model calls per question, as during
optimization (``optimizers.harness``): the model reasons on question + prompt, then the
task's extractor is appended after its reasoning and the model writes the answer. lm-eval
runs both, with its own model types (``hf``, ``local-chat-completions``, ``vllm``):

1. a ``generate_until`` task per prompt whose documents are the test rows with the
   prompt in the slot (``reasoning`` pass);
2. a ``generate_until`` task whose documents also carry the reasoning, continued
   through ``gen_prefix`` = reasoning + extractor (``answer`` pass), scored by exact match
   after the suite's own answer parser, plugged in as a custom filter (``!function``).

Task YAMLs and document files are written per job with absolute paths to the local test
data. One model instance serves every prompt of a job.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.prompt_slot import answer_prefix, user_message

INVALID = "[invalid]"
ANSWER_TOKENS = 8
_FILTERS_MODULE = "suite_filters"


@dataclass(frozen=True)
class PromptCell:
    """One prompt to evaluate: where it came from, and its text."""

    name: str  # unique and file-safe within a job, e.g. "smollm2-135m__greater"
    prompt: str


class _FunctionTag(str):
    """A YAML ``!function`` reference (lm-eval resolves it relative to the YAML file)."""


yaml.add_representer(_FunctionTag, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _task_yaml(name: str, documents: Path, max_tokens: int, until: list[str], filter_function: str,
               gen_prefix: str | None = None) -> dict:
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(documents.resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{user_message}}",
        "doc_to_target": "{{gold}}",
        "generation_kwargs": {"until": until, "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0.0},
        "filter_list": [{"name": "suite", "filter": [
            {"function": "custom", "filter_fn": _FunctionTag(f"{_FILTERS_MODULE}.{filter_function}")},
            {"function": "take_first"},
        ]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    if gen_prefix:
        config["gen_prefix"] = gen_prefix
    return config


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _write_filters(workdir: Path) -> None:
    (workdir / f"{_FILTERS_MODULE}.py").write_text(
        "# The suite's answer parser as lm-eval filters (written by evaluation.lmeval).\n"
        "from evaluation.lmeval_filters import answer_after_extractor, answer_in_reasoning  # noqa: F401\n"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def evaluate_cells(lm, task, examples, cells: list[PromptCell], workdir: Path, max_reasoning_tokens: int,
                   apply_chat_template: bool = True, response_cache: Path | None = None) -> dict[str, dict]:
    """Run both passes for every cell on ``examples`` (test rows); one result per cell name.

    ``response_cache`` (a path prefix) is lm-eval's own response cache (``use_cache``).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_filters(workdir)
    golds = [task.answer_format.canonical(e.gold) for e in examples]
    use_cache = None
    if response_cache is not None:
        Path(response_cache).parent.mkdir(parents=True, exist_ok=True)
        use_cache = str(response_cache)

    # Pass 1: reasoning.
    reasoning_tasks = {}
    for cell in cells:
        name = f"suite_reasoning_{_safe(task.name)}_{_safe(cell.name)}"
        rows = [{"id": e.id, "task": task.name, "user_message": user_message(e.question, cell.prompt), "gold": gold}
                for e, gold in zip(examples, golds)]
        documents = _write_jsonl(workdir / cell.name / "reasoning.jsonl", rows)
        config = _task_yaml(name, documents, max_reasoning_tokens, [], "answer_in_reasoning")
        (workdir / f"{name}.yaml").write_text(yaml.dump(config, sort_keys=False))
        reasoning_tasks[cell.name] = name
    first = simple_evaluate(model=lm, tasks=list(reasoning_tasks.values()), task_manager=TaskManager(include_path=str(workdir)),
                            apply_chat_template=apply_chat_template, log_samples=True, bootstrap_iters=0,
                            use_cache=use_cache)

    # Pass 2: the extractor after the reasoning, then the answer.
    answer_tasks, reasoning_of = {}, {}
    for cell in cells:
        samples = _in_doc_order(first["samples"][reasoning_tasks[cell.name]])
        reasoning = [s["resps"][0][0] for s in samples]
        reasoning_of[cell.name] = reasoning
        name = f"suite_answer_{_safe(task.name)}_{_safe(cell.name)}"
        rows = [{"id": e.id, "task": task.name, "user_message": user_message(e.question, cell.prompt), "gold": gold,
                 "reasoning": r, "answer_prefix": answer_prefix(r, task.extractor)}
                for e, gold, r in zip(examples, golds, reasoning)]
        documents = _write_jsonl(workdir / cell.name / "answer.jsonl", rows)
        config = _task_yaml(name, documents, ANSWER_TOKENS, ["\n"], "answer_after_extractor", gen_prefix="answer_prefix")
        (workdir / f"{name}.yaml").write_text(yaml.dump(config, sort_keys=False))
        answer_tasks[cell.name] = name
    second = simple_evaluate(model=lm, tasks=list(answer_tasks.values()), task_manager=TaskManager(include_path=str(workdir)),
                             apply_chat_template=apply_chat_template, log_samples=True, bootstrap_iters=0,
                             use_cache=use_cache)

    results = {}
    for cell in cells:
        samples = _in_doc_order(second["samples"][answer_tasks[cell.name]])
        parsed = [_unwrap(s["filtered_resps"]) for s in samples]
        correct = [bool(s["exact_match"]) for s in samples]  # lm-eval's own exact match on the parsed answers
        if correct != [p == g for p, g in zip(parsed, golds)]:
            raise RuntimeError(f"lm-eval's exact match disagrees with the parsed answers for {cell.name}")
        single_pass = _in_doc_order(first["samples"][reasoning_tasks[cell.name]])
        n = len(examples)
        accuracy = sum(correct) / n
        per_sample = [{"id": e.id, "gold": g, "answer": p, "correct": c, "reasoning": r, "continuation": s["resps"][0][0]}
                      for e, g, p, c, r, s in zip(examples, golds, parsed, correct, reasoning_of[cell.name], samples)]
        results[cell.name] = {
            "accuracy": accuracy,
            "stderr": math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else None,
            "n": n,
            "parse_rate": sum(p != INVALID for p in parsed) / n,
            "accuracy_without_extractor": sum(s["exact_match"] for s in single_pass) / n,
            "lm_eval_tasks": [reasoning_tasks[cell.name], answer_tasks[cell.name]],
            "samples": per_sample,
        }
    return results


def _unwrap(value):
    """lm-eval keeps a filtered response in (possibly nested) lists; the answer is the string inside."""
    while isinstance(value, list | tuple):
        value = value[0]
    return value


def _in_doc_order(samples: list[dict]) -> list[dict]:
    return sorted(samples, key=lambda s: s["doc_id"])
