"""The suite's answer parser, as lm-eval custom filters (referenced by the generated task YAMLs).

Each document names its task; the filter returns the canonical parsed answer, or
``[invalid]`` when nothing valid was found, so exact match compares like with like.
"""

from __future__ import annotations

import tasks

INVALID = "[invalid]"


def _answer(task_name: str, continuation: str, reasoning: str = "") -> str:
    answer = tasks.get_task(task_name).parse_answer(continuation, reasoning)
    return INVALID if answer is None else answer


def answer_after_extractor(resps, docs):
    """Lenient: the answer written after the extractor; failing that, the one stated in the reasoning."""
    return [[_answer(doc["task"], r, doc["reasoning"]) for r in rs] for rs, doc in zip(resps, docs)]


def answer_strict(resps, docs):
    """Strict: the answer only if it opens the text after the extractor."""
    def strict(task_name: str, continuation: str) -> str:
        answer = tasks.get_task(task_name).answer_format.parse_strict(continuation)
        return INVALID if answer is None else answer

    return [[strict(doc["task"], r) for r in rs] for rs, doc in zip(resps, docs)]


def answer_in_reasoning(resps, docs):
    """The answer stated in the reasoning alone (the single-pass score, for reference)."""
    return [[_answer(doc["task"], r) for r in rs] for rs, doc in zip(resps, docs)]
