"""The optimizer LLM of text-feedback methods, and robust parsing of what it writes.

By default the optimizer LLM is the task model itself (the paper's self-optimization
setting); any OpenAI-compatible endpoint works the same. Every sample is one optimizer
call, charged to the budget whether or not its output can be used. Small models break
formats: a missing closing tag, quotes, markdown and "Instruction:"-style labels are
tolerated; empty and over-long outputs are rejected (and still charged).
"""

from __future__ import annotations

import re

from model_engine import GenerationParams
from optimizers.base import Budget

MAX_PROMPT_CHARS = 500  # OPRO's limit; longer outputs are rambling, not instructions
_LABEL = re.compile(
    r"^\s*(?:new\s+|improved\s+|updated\s+|final\s+)?(?:instruction|prompt|text|answer|output)\s*\d*\s*[:\-]\s*", re.I
)


class OptimizerLLM:
    def __init__(self, backend, budget: Budget, seed: int):
        self.backend, self.budget, self.seed = backend, budget, seed
        self.calls = 0  # distinct seeds for successive sampling calls of a run (checkpointed)

    def sample(self, message: str, n: int, temperature: float, max_tokens: int, top_p: float = 1.0,
               assistant_prefix: str = "") -> list[str]:
        """``n`` seeded samples for one meta-prompt (charged as ``n`` optimizer calls)."""
        return self.sample_many([message], n, temperature, max_tokens, top_p, assistant_prefix)[0]

    def sample_many(self, messages: list[str], n: int, temperature: float, max_tokens: int, top_p: float = 1.0,
                    assistant_prefix: str = "") -> list[list[str]]:
        """``n`` samples for each meta-prompt, in one batched call.

        Every completion of the call has its own sample index, so identical meta-prompts in
        one batch get independent samples instead of one cached completion charged n times.
        """
        self.budget.charge_optimizer_calls(n * len(messages))
        self.calls += 1
        params = GenerationParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                  seed=self.seed * 100_003 + self.calls)
        before = self.backend.meter.total
        completions = self.backend.chat(
            [[{"role": "user", "content": m}] for m in messages for _ in range(n)],
            params,
            sample_indices=list(range(n * len(messages))),
            assistant_prefix=assistant_prefix,
        )
        self.budget.optimizer_usage = self.budget.optimizer_usage + (self.backend.meter.total - before)
        texts = [c.text for c in completions]
        return [texts[i * n:(i + 1) * n] for i in range(len(messages))]


def clean_prompt(text: str | None) -> str | None:
    """Strip decoration; None for empty or over-long outputs."""
    if text is None:
        return None
    text = text.strip()
    text = re.sub(r"\*\*|__|`", "", text)
    text = _LABEL.sub("", text)
    text = text.strip().strip("\"'“”‘’").strip()
    text = re.sub(r"\s+", " ", text)
    if not text or len(text) > MAX_PROMPT_CHARS:
        return None
    return text[0].upper() + text[1:]


def between(text: str, start: str, end: str) -> list[str]:
    """Every span between ``start`` and ``end`` tags; a missing closing tag takes the rest.

    Without any opening tag the whole text counts as one span (small models often drop
    the tags but still answer).
    """
    if start not in text:
        return [text.split(end)[0]] if text.strip() else []
    spans = []
    for chunk in text.split(start)[1:]:
        spans.append(chunk.split(end)[0])
    return spans


def parse_tagged(text: str, start: str, end: str) -> list[str]:
    return [p for p in (clean_prompt(span) for span in between(text, start, end)) if p]
