"""OPRO: Optimization by PROmpting (Yang et al. 2023).

Each step the optimizer LLM sees a meta-prompt with (a) the best
``max_instructions_shown`` instructions so far with their training scores (0-100),
in ascending order, and (b) ``exemplars`` random training problems with the
instruction's place marked <INS> after the question; it is asked for a new, better
instruction in <INS></INS> tags, ``samples_per_step`` times. New instructions are
scored on the training split. The trajectory only grows. At the end the
``final_candidates`` best on train go to the shared final choice on dev.
"""

from __future__ import annotations

from pydantic import Field

from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import OptimizerOptions
from optimizers.optimizer_llm import parse_tagged


class OPROOptions(OptimizerOptions):
    steps: int = Field(200, ge=1, description="optimization steps (a cap may end the run earlier)")
    samples_per_step: int = Field(8, ge=1, description="instructions sampled per step")
    max_instructions_shown: int = Field(20, ge=1, description="best earlier instructions shown in the meta-prompt")
    exemplars: int = Field(3, ge=1, description="training problems shown in the meta-prompt")
    temperature: float = Field(1.0, ge=0, description="optimizer-LLM sampling temperature")
    max_tokens: int = Field(512, ge=1, description="optimizer-LLM completion length")
    score_threshold: float = Field(0.0, ge=0, le=1, description="instructions below this train accuracy are not shown")
    n_train: int | None = Field(None, ge=1, description="train rows instructions are scored on (null: all, as in the reference)")
    final_candidates: int = Field(5, ge=1, description="best instructions on train compared on dev at the end")

    def deviations(self) -> list[str]:
        return [f"instructions scored on the first {self.n_train} train rows, not all"] if self.n_train else []


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


@register_optimizer("opro")
class OPRO(Optimizer):
    Options = OPROOptions
    uses_optimizer_llm = True
    test_options = {"steps": 3, "samples_per_step": 2, "n_train": 8, "final_candidates": 2, "max_tokens": 48}

    def _train(self, run):
        return run.train[: self.options.n_train] if self.options.n_train else run.train

    def schedule(self, run) -> int:
        return self.options.steps

    def dev_candidates(self) -> int:
        return self.options.final_candidates

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        rows = min(self.options.n_train or n_train, n_train)  # the initial instruction, then one new one
        return 2 * rows + self.dev_reserve(n_dev)

    def acceptable(self, run, prompt: str, known: set[str]) -> bool:
        if prompt in known or "INS" in prompt:
            return False
        return not (run.task.family == "gsm8k" and any(ch.isdigit() for ch in prompt))  # no leaked answers

    def start(self, run) -> dict:
        state = {"history": [], "rejected": 0}
        for prompt, evaluation in run.score_affordable([run.initial_prompt], self._train(run), "train"):
            state["history"].append({"prompt": prompt, "score": evaluation.accuracy, "step": 0})
            run.record(prompt, evaluation.accuracy, "train", new=1)
        return state

    def step(self, run, state) -> None:
        train = self._train(run)
        shown = shown_instructions(state["history"], self.options.max_instructions_shown, self.options.score_threshold)
        exemplars = run.rng.sample(train, min(self.options.exemplars, len(train)))
        samples = run.llm.sample(meta_prompt(shown, exemplars), self.options.samples_per_step,
                                 self.options.temperature, self.options.max_tokens)
        known, new = {h["prompt"] for h in state["history"]}, []
        for text in samples:
            parsed = parse_tagged(text, "<INS>", "</INS>")
            if parsed and self.acceptable(run, parsed[0], known | set(new)):
                new.append(parsed[0])
            else:
                state["rejected"] += 1
        for prompt, evaluation in run.score_affordable(new, train, "train"):
            state["history"].append({"prompt": prompt, "score": evaluation.accuracy, "step": run.step_index})
        best = max(state["history"], key=lambda h: (h["score"], -h["step"]))
        run.record(best["prompt"], best["score"], "train", shown=len(shown), new=len(new),
                   rejected_so_far=state["rejected"])

    def final_candidates(self, run, state) -> list[str]:
        ranked = sorted(state.get("history", []), key=lambda h: (-h["score"], h["step"]))
        return [h["prompt"] for h in ranked[: self.options.final_candidates]]
