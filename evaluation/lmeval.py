"""Test-split evaluation of optimized prompts through lm-evaluation-harness.

The suite's scoring protocol takes two model calls per question, as during
optimization (``optimizers.harness``): the model reasons on question + prompt, then the
task's extractor is appended after its reasoning and the answer is read there. lm-eval
runs both, with its own model types (``hf``, ``local-chat-completions``, ``vllm``):

1. a ``generate_until`` task per prompt whose documents are the test rows with the
   prompt in the slot (``reasoning`` pass);
2. tasks whose documents also carry the reasoning, continued through ``gen_prefix`` =
   reasoning + extractor (``answer`` pass): a ``generate_until`` task scored by exact
   match after the suite's own parser, strict and lenient, plugged in as custom filters
   (``!function``); and for closed answer sets (letters, labels) a ``multiple_choice``
   task that picks the valid answer the model finds most likely, the harness's decision
   and the headline score.

A base model (no chat template) reads the plain layout of optimization, without
``gen_prefix``. Task YAMLs and document files are written per job with absolute paths to
the local test data. One model instance serves every prompt of a job.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tasks.extractors import Extractor
from tasks.prompt_slot import PLAIN_STOP, answer_prefix, plain_context, user_message

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


def _task_yaml(name: str, documents: Path, output_type: str = "generate_until", gen_prefix: str | None = None,
               **fields) -> dict:
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(documents.resolve())}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{gold}}",
        **fields,
        "metadata": {"version": 1},
    }
    if gen_prefix:
        config["gen_prefix"] = gen_prefix
    return config


def _generation_fields(max_tokens: int, until: list[str], filters: dict[str, str]) -> dict:
    """A ``generate_until`` task scored by exact match after each named filter of the suite's parser."""
    return {
        "generation_kwargs": {"until": until, "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0.0},
        "filter_list": [{"name": name, "filter": [
            {"function": "custom", "filter_fn": _FunctionTag(f"{_FILTERS_MODULE}.{function}")},
            {"function": "take_first"},
        ]} for name, function in filters.items()],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


def _choice_fields() -> dict:
    """A ``multiple_choice`` task: the valid answers scored by log-likelihood after the extractor.

    The choices carry their own leading space (``Extractor.answer_lead``), so no delimiter
    is inserted between the extractor and the answer.
    """
    return {"doc_to_choice": "choices", "doc_to_target": "gold_choice", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _write_filters(workdir: Path) -> None:
    (workdir / f"{_FILTERS_MODULE}.py").write_text(
        "# The suite's answer parser as lm-eval filters (written by evaluation.lmeval).\n"
        "from evaluation.lmeval_filters import answer_after_extractor, answer_in_reasoning, answer_strict  # noqa: F401\n"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def evaluate_cells(lm, task, examples, cells: list[PromptCell], workdir: Path, max_reasoning_tokens: int,
                   extractor: Extractor | None = None, chat: bool = True, response_cache: Path | None = None, tokenizer=None, likelihood: bool = True) -> dict[str, dict]:
    """Run both passes for every cell on ``examples`` (test rows); one result per cell name.

    ``extractor`` is the target model's variant (``terms.extractor_for``); ``chat`` says
    whether the target has a chat template (a base model reads the plain layout, as in
    optimization, and its reasoning ends at the next question, ``PLAIN_STOP``). ``response_cache`` (a
    path prefix) is lm-eval's own response cache (``use_cache``). With ``tokenizer``, the
    share of reasoning cut by the token limit is reported. Without ``likelihood`` (chat
    completion endpoints give no log-likelihoods) the written answer is the score.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    extractor = extractor or task.extractor()
    choices = task.choices(extractor.variant) if likelihood else None
    reasoning_stop = () if chat else PLAIN_STOP
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_filters(workdir)
    golds = [task.answer_format.canonical(e.gold) for e in examples]
    use_cache = None
    if response_cache is not None:
        Path(response_cache).parent.mkdir(parents=True, exist_ok=True)
        use_cache = str(response_cache)

    def run(configs: dict[str, dict]) -> dict:
        for name, config in configs.items():
            (workdir / f"{name}.yaml").write_text(yaml.dump(config, sort_keys=False))
        return simple_evaluate(model=lm, tasks=list(configs), task_manager=TaskManager(include_path=str(workdir), include_defaults=False),
                               apply_chat_template=chat, log_samples=True, bootstrap_iters=0, use_cache=use_cache)

    def context(message: str, assistant_prefix: str = "") -> tuple[str, str | None]:
        """(document text, gen_prefix): a chat turn continued through gen_prefix, or the plain layout."""
        if chat:
            return message, assistant_prefix or None
        return plain_context(message, assistant_prefix), None

    answer_fields = _generation_fields(ANSWER_TOKENS, ["\n"], {"strict": "answer_strict", "lenient": "answer_after_extractor"})
    announce = likelihood and hasattr(lm, "expect_answer_pass")  # the suite's model reads each answer with its reasoning
    if announce:
        lm.expect_answer_pass(_answer_contexts(lm, examples, cells, extractor, context, chat),
                              answer_fields["generation_kwargs"], keep_logprobs=bool(choices))

    # Pass 1: reasoning.
    reasoning_tasks, configs = {}, {}
    for cell in cells:
        name = reasoning_tasks[cell.name] = f"suite_reasoning_{_safe(task.name)}_{_safe(cell.name)}"
        rows = [{"id": e.id, "task": task.name, "context": context(user_message(e.question, cell.prompt))[0],
                 "gold": gold} for e, gold in zip(examples, golds)]
        documents = _write_jsonl(workdir / cell.name / "reasoning.jsonl", rows)
        configs[name] = _task_yaml(name, documents, **_generation_fields(
            max_reasoning_tokens, list(reasoning_stop), {"in_reasoning": "answer_in_reasoning"}))
    first = run(configs)

    # Pass 2: the extractor after the reasoning, then the answer: written (strict and
    # lenient) and, for closed answer sets, chosen among the valid answers by likelihood.
    answer_tasks, choice_tasks, reasoning_of, configs = {}, {}, {}, {}
    for cell in cells:
        samples = _by_filter(first["samples"][reasoning_tasks[cell.name]], "in_reasoning")
        reasoning = reasoning_of[cell.name] = [s["resps"][0][0] for s in samples]
        rows = []
        for e, gold, r in zip(examples, golds, reasoning):
            text, gen_prefix = context(user_message(e.question, cell.prompt), answer_prefix(r, extractor.text))
            row = {"id": e.id, "task": task.name, "context": text, "gold": gold, "reasoning": r, "gen_prefix": gen_prefix}
            if choices:
                row |= {"choices": list(choices), "gold_choice": extractor.continuation(gold)}
            rows.append(row)
        documents = _write_jsonl(workdir / cell.name / "answer.jsonl", rows)
        prefix = "gen_prefix" if chat else None
        name = answer_tasks[cell.name] = f"suite_answer_{_safe(task.name)}_{_safe(cell.name)}"
        configs[name] = _task_yaml(name, documents, gen_prefix=prefix, **answer_fields)
        if choices:
            name = choice_tasks[cell.name] = f"suite_choice_{_safe(task.name)}_{_safe(cell.name)}"
            configs[name] = _task_yaml(name, documents, "multiple_choice", gen_prefix=prefix, **_choice_fields())
    second = run(configs)
    if announce:
        lm.expect_answer_pass(None)

    results = {}
    for cell in cells:
        n = len(examples)
        generated = second["samples"][answer_tasks[cell.name]]
        strict_samples, lenient_samples = _by_filter(generated, "strict"), _by_filter(generated, "lenient")
        strict = [_unwrap(s["filtered_resps"]) for s in strict_samples]
        lenient = [_unwrap(s["filtered_resps"]) for s in lenient_samples]
        for label, parsed, rows in (("strict", strict, strict_samples), ("lenient", lenient, lenient_samples)):
            if [bool(s["exact_match"]) for s in rows] != [p == g for p, g in zip(parsed, golds)]:
                raise RuntimeError(f"lm-eval's exact match disagrees with the {label} answers for {cell.name}")
        if choices:
            chosen_samples = _by_filter(second["samples"][choice_tasks[cell.name]], "none")
            answers = [task.chosen([ll for ll, _ in s["filtered_resps"]]) for s in chosen_samples]
            correct = [bool(s["acc"]) for s in chosen_samples]  # lm-eval's own decision
            if correct != [a == g for a, g in zip(answers, golds)]:
                raise RuntimeError(f"lm-eval's multiple-choice accuracy disagrees with the chosen answers for {cell.name}")
            choice_logprobs = [[ll for ll, _ in s["filtered_resps"]] for s in chosen_samples]
        else:
            answers, correct, choice_logprobs = lenient, [p == g for p, g in zip(lenient, golds)], [None] * n
        single_pass = _by_filter(first["samples"][reasoning_tasks[cell.name]], "in_reasoning")
        reasoning = reasoning_of[cell.name]
        accuracy = sum(correct) / n
        per_sample = [{"id": e.id, "question": e.question, "gold": g, "answer": a, "correct": c, "strict": st, "lenient": le,
                       "choice_logprobs": lp, "reasoning": r, "continuation": s["resps"][0][0]}
                      for e, g, a, c, st, le, lp, r, s in zip(examples, golds, answers, correct, strict, lenient,
                                                             choice_logprobs, reasoning, lenient_samples)]
        results[cell.name] = {
            "accuracy": accuracy,
            "stderr": math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else None,
            "n": n,
            "answer_step": "choice" if choices else "generated",
            "parse_rate": sum(a != INVALID for a in answers) / n,
            "strict_accuracy": sum(p == g for p, g in zip(strict, golds)) / n,
            "strict_parse_rate": sum(p != INVALID for p in strict) / n,
            "lenient_accuracy": sum(p == g for p, g in zip(lenient, golds)) / n,
            "lenient_parse_rate": sum(p != INVALID for p in lenient) / n,
            "truncated": _truncated(reasoning, tokenizer, max_reasoning_tokens),
            "accuracy_without_extractor": sum(s["exact_match"] for s in single_pass) / n,
            "extractor": asdict(extractor),
            "lm_eval_tasks": [reasoning_tasks[cell.name], answer_tasks[cell.name]] + (
                [choice_tasks[cell.name]] if choices else []),
            "samples": per_sample,
        }
    return results


def _answer_contexts(lm, examples, cells: list[PromptCell], extractor: Extractor, context, chat: bool):
    """(reasoning context, reasoning) -> the answer context lm-eval will send for it, rendered as lm-eval renders
    both passes (a user turn, continued through ``gen_prefix``; or the plain layout); None for other contexts."""
    def rendered(text: str, gen_prefix: str | None = None) -> str:
        if not chat:
            return text
        turns = [{"role": "user", "content": text}] + ([{"role": "assistant", "content": gen_prefix}] if gen_prefix else [])
        return lm.apply_chat_template(turns, add_generation_prompt=gen_prefix is None)

    message_of = {}
    for cell in cells:
        for e in examples:
            message = user_message(e.question, cell.prompt)
            message_of[rendered(context(message)[0])] = message

    def answer_context(reasoning_context: str, reasoning: str) -> str | None:
        message = message_of.get(reasoning_context)
        return None if message is None else rendered(*context(message, answer_prefix(reasoning, extractor.text)))

    return answer_context


def _truncated(reasoning: list[str], tokenizer, limit: int) -> float | None:
    """Share of reasoning that ran to the token limit (None without a tokenizer to count with)."""
    if tokenizer is None:
        return None
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) >= limit - 1 for r in reasoning) / len(reasoning)


def _by_filter(samples: list[dict], name: str) -> list[dict]:
    """One filter's samples in document order (lm-eval logs one entry per document and filter)."""
    return sorted((s for s in samples if s.get("filter", name) == name), key=lambda s: s["doc_id"])


def _unwrap(value):
    """lm-eval keeps a filtered response in (possibly nested) lists; the answer is the string inside."""
    while isinstance(value, list | tuple):
        value = value[0]
    return value


