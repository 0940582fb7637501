"""What the text-feedback optimizers (APE, OPRO, ProTeGi, GPO) share.

A ``TextRun`` holds one run's task data, task model, optimizer LLM, budget, random
stream and checkpoint, scores prompts through the shared ``Harness``, makes the final
choice on dev and assembles the result record. Each method subclasses it with its
loop; its state is a JSON-able dict saved after every step.
"""

from __future__ import annotations

import random
import time

from typing import ClassVar

from optimizers.base import Budget, Checkpoint, Optimizer, provenance, resume_progress, save_progress
from optimizers.harness import Evaluation, Harness
from optimizers.optimizer_llm import OptimizerLLM


class TextRun:
    name = "text"

    def __init__(self, options, data, model, budget: Budget, rng: random.Random, checkpoint: Checkpoint, seed: int,
                 optimizer_model=None):
        self.o, self.data, self.model, self.budget, self.rng = options, data, model, budget, rng
        self.checkpoint, self.seed = checkpoint, seed
        self.optimizer_backend = optimizer_model if optimizer_model is not None else model
        self.llm = OptimizerLLM(self.optimizer_backend, budget, seed)
        self.harness = Harness(data.task, model, budget, options.max_reasoning_tokens)
        self.task = data.task
        self.started = time.perf_counter()
        self.scores: dict[tuple[str, str], Evaluation] = {}

    # ---- scoring -------------------------------------------------------------------------------
    def dev(self):
        return self.data.dev[: self.o.n_dev] if getattr(self.o, "n_dev", None) else self.data.dev

    def cost(self, prompt: str, examples) -> int:
        return len(self.budget.uncharged(prompt, [e.id for e in examples]))

    def affordable(self, prompts: list[str], examples, reserve: int = 0) -> list[str]:
        """The longest head of ``prompts`` whose scoring fits the budget (less ``reserve``)."""
        total, fitting = 0, []
        for prompt in prompts:
            total += self.cost(prompt, examples)
            if not self.budget.can_afford(total + reserve):
                break
            fitting.append(prompt)
        return fitting

    def score(self, prompt: str, examples, split: str) -> Evaluation:
        return self.score_all([prompt], examples, split)[0]

    def score_all(self, prompts: list[str], examples, split: str) -> list[Evaluation]:
        """Each prompt on the same rows; the unscored ones in one batched harness call."""
        return self.score_pairs([(prompt, examples) for prompt in prompts], split)

    def score_pairs(self, requests: list[tuple[str, list]], split: str) -> list[Evaluation]:
        """(prompt, examples) pairs; the unscored ones in one batched harness call."""
        keys = [(prompt, split + ":" + ",".join(e.id for e in examples)) for prompt, examples in requests]
        missing = {key: examples for key, (_, examples) in zip(keys, requests) if key not in self.scores}
        if missing:
            evaluations = self.harness.evaluate_many([(prompt, examples) for (prompt, _), examples in missing.items()])
            self.scores.update(zip(missing, evaluations))
        return [self.scores[key] for key in keys]

    def dev_reserve(self, count: int) -> int:
        """Task calls kept back for the final choice of ``count`` prompts on dev."""
        return count * len(self.dev())

    # ---- final choice and result -----------------------------------------------------------------
    def select_on_dev(self, prompts: list[str]) -> tuple[str, list[dict]]:
        """The best on dev among ``prompts`` (ranked best first); as many as the budget allows.

        Prompts already scored on dev cost nothing again. If none can be scored, the
        first (the method's own best) is returned unscored.
        """
        candidates = list(dict.fromkeys(p for p in prompts if p))
        if not candidates:
            raise ValueError(f"{self.name}: no valid prompt was produced; the optimizer LLM's outputs were all rejected")
        fitting = self.affordable(candidates, self.dev())
        table = [{"prompt": prompt, "dev_accuracy": evaluation.accuracy, "dev_parse_rate": evaluation.parse_rate}
                 for prompt, evaluation in zip(fitting, self.score_all(fitting, self.dev(), "dev"))]
        if not table:
            return candidates[0], [{"prompt": candidates[0], "dev_accuracy": None, "dev_parse_rate": None}]
        best = max(table, key=lambda row: row["dev_accuracy"])  # ties: the earlier, better-ranked prompt
        return best["prompt"], table

    def result(self, prompt: str, selection: list[dict], trajectory: list[dict], stopped: str, initial: str) -> dict:
        budget = self.budget.record()
        budget["seconds"] = {"total": time.perf_counter() - self.started}
        return {
            "optimizer": self.name,
            "task": self.task.name,
            "model": self.model.spec.name,
            "prompt": prompt,
            "initial_prompt": initial,
            "selection": {"split": "dev", "n": len(self.dev()), "candidates": selection},
            "trajectory": trajectory,
            "stopped": stopped,
            "budget": budget,
            "provenance": provenance(self.model, self.data, self.o, self.seed, self.optimizer_backend),
        }

    # ---- progress and checkpoints ----------------------------------------------------------------
    def progress(self, step: int, best: str, score: float, note: str = "") -> None:
        print(f"[{self.name}] step {step} best {score:.3f} task calls {self.budget.task_calls} "
              f"optimizer calls {self.budget.optimizer_calls}{note} prompt {best!r}", flush=True)

    def save(self, state: dict) -> None:
        state["llm_calls"] = self.llm._calls
        save_progress(self.checkpoint, self.o, self.rng, self.budget, state)

    def resume(self) -> dict | None:
        state = resume_progress(self.checkpoint, self.o, self.rng, self.budget, self.name)
        if state is not None:
            self.llm._calls = state["llm_calls"]
        return state


class TextOptimizer(Optimizer):
    """An optimizer whose work is done by a ``TextRun`` subclass (``Run``)."""

    Run: ClassVar[type[TextRun]]

    def optimize(self, data, model, budget, rng, checkpoint, seed: int = 0, optimizer_model=None) -> dict:
        return self.Run(self.options, data, model, budget, rng, checkpoint, seed, optimizer_model).run()
