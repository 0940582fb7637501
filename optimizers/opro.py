"""OPRO: Optimization by PROmpting (Yang et al. 2023).

Each step the optimizer LLM sees a meta-prompt with (a) the best
``max_instructions_shown`` instructions so far with their training scores (0-100),
in ascending order, and (b) ``exemplars`` random training problems with the
instruction's place marked <INS> after the question; it is asked for a new, better
instruction in <INS></INS> tags, ``samples_per_step`` times. New instructions are
scored on the whole training split. The trajectory only grows. At the end the
``final_candidates`` best on train are compared on dev (the harness's choice rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizers.base import register_optimizer, require_positive
from optimizers.optimizer_llm import parse_tagged
from optimizers.text_run import TextOptimizer, TextRun


@dataclass(frozen=True)
class OPROOptions:
    steps: int = 200
    samples_per_step: int = 8
    max_instructions_shown: int = 20
    exemplars: int = 3
    temperature: float = 1.0
    max_tokens: int = 512
    #: instructions scoring below this training accuracy (0-1) are not shown
    score_threshold: float = 0.0
    initial_prompt: str = "Let's solve the problem."
    #: train rows instructions are scored on (None: the whole train split, as in the reference)
    n_train: int | None = None
    final_candidates: int = 5
    max_reasoning_tokens: int = 512
    n_dev: int | None = None

    def __post_init__(self):
        require_positive(self, "steps", "samples_per_step", "max_instructions_shown", "exemplars", "max_tokens",
                     "final_candidates", "max_reasoning_tokens")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1 or null, got {self.n_train}")
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be within [0, 1], got {self.score_threshold}")


def shown_instructions(history: list[dict], limit: int, threshold: float) -> list[dict]:
    """The ``limit`` best-scoring instructions at or above ``threshold``, in ascending order."""
    eligible = [h for h in history if h["score"] >= threshold]
    best = sorted(eligible, key=lambda h: (h["score"], -h["step"]), reverse=True)[:limit]
    return sorted(best, key=lambda h: (h["score"], -h["step"]))


def meta_prompt(shown: list[dict], exemplars) -> str:
    trajectory = "\n\n".join(f"text:\n{h['prompt']}\nscore:\n{round(100 * h['score'])}" for h in shown)
    problems = "\n\n".join(f"Problem:\nQ: {e.question}\n<INS>\nGround truth answer:\n{e.gold}" for e in exemplars)
    return (
        "Your task is to write an instruction <INS>. Below are earlier instructions, each with its score. "
        "The score ranges from 0 to 100; higher is better. They are in ascending order of score.\n\n"
        f"{trajectory}\n\nBelow are some problems. The instruction is placed where <INS> stands.\n\n{problems}\n\n"
        "Write a new instruction that is different from all the instructions above and scores higher than all of "
        "them. It should be concise, effective and generally applicable to all the problems above. "
        "Wrap it with <INS> and </INS>."
    )


class OPRORun(TextRun):
    name = "opro"

    def acceptable(self, prompt: str, known: set[str]) -> bool:
        if prompt in known or "INS" in prompt:
            return False
        return not (self.task.name == "gsm8k" and any(ch.isdigit() for ch in prompt))  # no leaked answers

    def run(self) -> dict:
        train = self.data.train[: self.o.n_train] if self.o.n_train else self.data.train
        reserve = self.dev_reserve(self.o.final_candidates)
        state = self.resume()
        if state is None:
            if not self.budget.can_afford(self.cost(self.o.initial_prompt, train) + reserve):
                raise ValueError("opro: the budget cannot even score the initial instruction on train")
            score = self.score(self.o.initial_prompt, train, "train").accuracy
            state = {"step": 0, "history": [{"prompt": self.o.initial_prompt, "score": score, "step": -1}],
                     "trajectory": [], "stopped": None, "rejected": 0}
            self._record(state, [])
            self.save(state)
        while state["step"] < self.o.steps and not state["stopped"]:
            shown = shown_instructions(state["history"], self.o.max_instructions_shown, self.o.score_threshold)
            exemplars = self.rng.sample(list(train), min(self.o.exemplars, len(train)))
            samples = self.llm.sample(meta_prompt(shown, exemplars), self.o.samples_per_step, self.o.temperature,
                                      self.o.max_tokens)
            known = {h["prompt"] for h in state["history"]}
            new = []
            for text in samples:
                parsed = parse_tagged(text, "<INS>", "</INS>")
                if parsed and self.acceptable(parsed[0], known | set(new)):
                    new.append(parsed[0])
                else:
                    state["rejected"] += 1
            fitting = self.affordable(new, train, reserve)
            for prompt, evaluation in zip(fitting, self.score_all(fitting, train, "train")):
                state["history"].append({"prompt": prompt, "score": evaluation.accuracy, "step": state["step"]})
            if len(fitting) < len(new):
                state["stopped"] = "budget"
            state["step"] += 1
            self._record(state, shown)
            self.save(state)
        ranked = sorted(state["history"], key=lambda h: (-h["score"], h["step"]))
        prompt, selection = self.select_on_dev([h["prompt"] for h in ranked[: self.o.final_candidates]])
        return self.result(prompt, selection, state["trajectory"], state["stopped"] or "steps", self.o.initial_prompt)

    def _record(self, state, shown) -> None:
        best = max(state["history"], key=lambda h: h["score"])
        state["trajectory"].append({
            "step": state["step"], "prompt": best["prompt"], "train_accuracy": best["score"],
            "new": [h for h in state["history"] if h["step"] == state["step"] - 1],
            "shown": len(shown), "rejected_so_far": state["rejected"],
            "task_calls": self.budget.task_calls, "optimizer_calls": self.budget.optimizer_calls,
        })
        self.progress(state["step"], best["prompt"], best["score"])


@register_optimizer("opro")
class OPRO(TextOptimizer):
    Options = OPROOptions
    Run = OPRORun
