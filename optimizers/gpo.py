"""GPO: gradient-inspired LLM-based prompt optimizer (Tang et al. 2024), paper setting.

Update direction: the meta-prompt shows the current prompt and the ``retrieved - 1``
earlier trajectory prompts most similar to it, with their dev scores (0-100).
Update method: generate a new prompt, changing at most ``w`` words, where ``w`` decays
on a cosine schedule from ``max_words`` to ``min_words`` over the run. Each step
``candidates_per_step`` samples are scored on dev; the best one not chosen before
becomes the current prompt (GPO always moves). The best prompts of the trajectory go
to the shared final choice (already scored on dev, so it costs nothing more).

Deviation from the reference, recorded in the result: similarity is the cosine of
bag-of-words vectors instead of Llama-2-7B sentence embeddings (not available offline).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Literal

from pydantic import Field, model_validator

from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import OptimizerOptions
from optimizers.optimizer_llm import parse_tagged


class GPOOptions(OptimizerOptions):
    epochs: int = Field(3, ge=1, description="passes over the train split (sets the number of steps)")
    batch_size: int = Field(8, ge=1, description="train rows per step in the reference's step count")
    candidates_per_step: int = Field(8, ge=1, description="prompts sampled and scored on dev per step")
    retrieved: int = Field(3, ge=1, description="trajectory prompts shown: the current one and the most similar")
    max_words: int = Field(50, ge=1, description="edit budget in words at the first step (cosine decay)")
    min_words: int = Field(10, ge=1, description="edit budget in words at the last step")
    exemplars: int = Field(3, ge=1, description="fixed train exemplars shown in the meta-prompt")
    temperature: float = Field(1.0, ge=0, description="optimizer-LLM sampling temperature")
    max_tokens: int = Field(512, ge=1, description="optimizer-LLM completion length")
    similarity: Literal["bag_of_words_cosine"] = Field(
        "bag_of_words_cosine", description="how trajectory prompts are compared (the reference: Llama-2-7B embeddings)")

    @model_validator(mode="after")
    def _word_range(self):
        if self.min_words > self.max_words:
            raise ValueError(f"need min_words <= max_words, got {self.min_words}, {self.max_words}")
        return self

    def deviations(self) -> list[str]:
        return ["trajectory retrieval by bag-of-words cosine, not Llama-2-7B sentence embeddings"]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """The reference's count: full batches, plus one if the remainder is at least half a batch."""
    return n_train // batch_size + (1 if n_train % batch_size >= batch_size / 2 else 0)


def word_cap(step: int, total_steps: int, max_words: int, min_words: int) -> int:
    """Cosine decay of the edit budget from ``max_words`` (step 0) to ``min_words`` (last step)."""
    return math.floor(min_words + (max_words - min_words) * 0.5 * (1 + math.cos(math.pi * step / total_steps)))


def similarity(a: str, b: str) -> float:
    va, vb = Counter(re.findall(r"\w+", a.lower())), Counter(re.findall(r"\w+", b.lower()))
    dot = sum(va[w] * vb[w] for w in va)
    norm = math.sqrt(sum(v * v for v in va.values())) * math.sqrt(sum(v * v for v in vb.values()))
    return dot / norm if norm else 0.0


def retrieve(trajectory: list[dict], k: int) -> list[dict]:
    """The current (last) entry first, then the k-1 earlier entries most similar to it."""
    current, earlier = trajectory[-1], trajectory[:-1]
    ranked = sorted(range(len(earlier)), key=lambda i: (-similarity(earlier[i]["prompt"], current["prompt"]), -i))
    return [current] + [earlier[i] for i in ranked[: k - 1]]


def meta_prompt(shown: list[dict], current: str, exemplars, words: int) -> str:
    history = "\n\n".join(f"Prompt: {h['prompt']}\nScore: {round(100 * h['score'])}" for h in shown)
    examples = "\n\n".join(f"Input: {e.question}\n<Prompt>\nOutput: {e.gold}" for e in exemplars)
    return (
        "Your task is to write a prompt to replace <Prompt>.\n\nBelow are previous prompts with their scores. "
        f"The score ranges from 0 to 100, and higher scores indicate better quality.\n\n{history}\n\n"
        f"The current prompt is: {current}\n\nThe prompt replaces <Prompt> in each input below, and the output "
        f"is judged by exact match with the answer shown.\n\n{examples}\n\n"
        "Carefully analyse the previous prompts and their scores, then write a new, improved prompt to replace "
        f"<Prompt>.\nYou are allowed to change up to {words} words in the current prompt.\n"
        "Wrap the new prompt with <START> and <END>."
    )


@register_optimizer("gpo")
class GPO(Optimizer):
    Options = GPOOptions
    uses_optimizer_llm = True
    test_options = {"epochs": 2, "batch_size": 25, "candidates_per_step": 2, "max_tokens": 48}

    def schedule(self, run) -> int:
        return self.options.epochs * steps_per_epoch(len(run.train), self.options.batch_size)

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        return n_dev + self.dev_reserve(n_dev)  # the initial prompt on dev, then one candidate

    def start(self, run) -> dict:
        state = {"path": [], "scores": {}, "rejected": 0}
        for prompt, evaluation in run.score_affordable([run.initial_prompt], run.dev, "dev"):
            state["path"].append({"prompt": prompt, "score": evaluation.accuracy})
            state["scores"][prompt] = evaluation.accuracy
            run.record(prompt, evaluation.accuracy, "dev")
        return state

    def step(self, run, state) -> None:
        o = self.options
        words = word_cap(len(state["path"]), self.schedule(run), o.max_words, o.min_words)
        current = state["path"][-1]["prompt"]
        exemplars = random.Random(run.seed).sample(run.train, min(o.exemplars, len(run.train)))  # fixed, as in the reference
        samples = run.llm.sample(meta_prompt(retrieve(state["path"], o.retrieved), current, exemplars, words),
                                 o.candidates_per_step, o.temperature, o.max_tokens)
        parsed = [parse_tagged(s, "<START>", "<END>") for s in samples]
        state["rejected"] += sum(not p for p in parsed)
        sampled = list(dict.fromkeys(p[0] for p in parsed if p))
        new = [p for p in sampled if p not in state["scores"]]
        for prompt, evaluation in run.score_affordable(new, run.dev, "dev"):
            state["scores"][prompt] = evaluation.accuracy
        pool = {p: state["scores"][p] for p in sampled if p in state["scores"]}
        pool[current] = 0.0  # GPO always moves away from the current prompt
        chosen = {h["prompt"] for h in state["path"]}
        fresh = [p for p in sorted(pool, key=lambda p: -pool[p]) if p not in chosen]
        best = fresh[0] if fresh else max(pool, key=pool.get)
        state["path"].append({"prompt": best, "score": state["scores"][best]})
        run.record(best, state["scores"][best], "dev", word_cap=words, candidates=len(new),
                   rejected_so_far=state["rejected"])

    def final_candidates(self, run, state) -> list[str]:
        ranked = sorted(enumerate(state.get("path", [])), key=lambda item: (-item[1]["score"], item[0]))
        return [h["prompt"] for _, h in ranked[:3]]
