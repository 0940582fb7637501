"""GPO: gradient-inspired LLM-based prompt optimizer (Tang et al. 2024), paper setting.

Update direction: the meta-prompt shows the current prompt and the ``retrieved - 1``
earlier trajectory prompts most similar to it, with their dev scores (0-100).
Update method: generate a new prompt, changing at most ``w`` words, where ``w`` decays
on a cosine schedule from ``max_words`` to ``min_words`` over the run. Each step
``candidates_per_step`` samples are scored on dev; the best one not chosen before
becomes the current prompt (GPO always moves). The best prompt of the trajectory wins.

Deviation from the reference, recorded in the result: similarity is the cosine of
bag-of-words vectors instead of Llama-2-7B sentence embeddings (not available offline).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass

from optimizers.base import register_optimizer, require_positive
from optimizers.optimizer_llm import parse_tagged
from optimizers.text_run import TextOptimizer, TextRun


@dataclass(frozen=True)
class GPOOptions:
    epochs: int = 3
    batch_size: int = 8
    candidates_per_step: int = 8
    retrieved: int = 3
    max_words: int = 50
    min_words: int = 10
    exemplars: int = 3
    temperature: float = 1.0
    max_tokens: int = 512
    initial_prompt: str = "Let's think step by step."
    max_reasoning_tokens: int = 512
    n_dev: int | None = None
    #: how trajectory prompts are compared (the reference used Llama-2-7B embeddings)
    similarity: str = "bag_of_words_cosine"

    def __post_init__(self):
        require_positive(self, "epochs", "batch_size", "candidates_per_step", "retrieved", "exemplars", "max_tokens",
                     "max_reasoning_tokens")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        if self.similarity != "bag_of_words_cosine":
            raise ValueError(f"similarity must be bag_of_words_cosine, got {self.similarity!r}")


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


class GPORun(TextRun):
    name = "gpo"

    def run(self) -> dict:
        dev = self.dev()
        total = self.o.epochs * steps_per_epoch(len(self.data.train), self.o.batch_size)
        exemplars = self._exemplars()
        state = self.resume()
        if state is None:
            if not self.budget.can_afford(self.cost(self.o.initial_prompt, dev)):
                raise ValueError("gpo: the budget cannot even score the initial prompt on dev")
            score = self.score(self.o.initial_prompt, dev, "dev").accuracy
            state = {"step": 0, "trajectory": [{"step": 0, "prompt": self.o.initial_prompt, "score": score,
                                                 "word_cap": None, "task_calls": self.budget.task_calls,
                                                 "optimizer_calls": 0}],
                     "scores": {self.o.initial_prompt: score}, "stopped": None, "rejected": 0}
            self.save(state)
        while state["step"] < total and not state["stopped"]:
            words = word_cap(len(state["trajectory"]), total, self.o.max_words, self.o.min_words)
            current = state["trajectory"][-1]["prompt"]
            shown = retrieve(state["trajectory"], self.o.retrieved)
            samples = self.llm.sample(meta_prompt(shown, current, exemplars, words), self.o.candidates_per_step,
                                      self.o.temperature, self.o.max_tokens)
            parsed = [parse_tagged(s, "<START>", "<END>") for s in samples]
            state["rejected"] += sum(not p for p in parsed)
            new = [p for p in dict.fromkeys(p[0] for p in parsed if p) if p not in state["scores"]]
            fitting = self.affordable(new, dev)
            for prompt, evaluation in zip(fitting, self.score_all(fitting, dev, "dev")):
                state["scores"][prompt] = evaluation.accuracy
            if len(fitting) < len(new):
                state["stopped"] = "budget"
            pool = {p: state["scores"][p] for p in dict.fromkeys(p[0] for p in parsed if p) if p in state["scores"]}
            pool[current] = 0.0  # GPO always moves away from the current prompt
            chosen = {h["prompt"] for h in state["trajectory"]}
            fresh = [p for p in sorted(pool, key=lambda p: -pool[p]) if p not in chosen]
            best = fresh[0] if fresh else max(pool, key=pool.get)
            state["step"] += 1
            state["trajectory"].append({"step": state["step"], "prompt": best, "score": state["scores"][best],
                                        "word_cap": words, "candidates": len(new), "task_calls": self.budget.task_calls,
                                        "optimizer_calls": self.budget.optimizer_calls})
            self.progress(state["step"], best, state["scores"][best], f" word cap {words}")
            self.save(state)
        ranked = sorted(state["trajectory"], key=lambda h: (-h["score"], h["step"]))
        prompt, selection = self.select_on_dev([h["prompt"] for h in ranked[:3]])  # already scored on dev: free
        return self.result(prompt, selection, state["trajectory"], state["stopped"] or "steps", self.o.initial_prompt)

    def _exemplars(self):
        """Three fixed format exemplars from train (seeded), as in the reference."""
        train = list(self.data.train)
        return random.Random(self.seed).sample(train, min(self.o.exemplars, len(train)))


@register_optimizer("gpo")
class GPO(TextOptimizer):
    Options = GPOOptions
    Run = GPORun
