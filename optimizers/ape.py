"""APE: Automatic Prompt Engineer (Zhou et al. 2022), propose-then-select with resampling.

1. Proposal: the optimizer LLM sees ``demos_per_request`` (question, answer) pairs from
   train and completes "The instruction was to ..."; ``proposal_requests`` requests of
   ``proposals_per_request`` samples each.
2. Screening: every unique proposal is scored on the first ``screen_examples`` dev rows.
3. The ``rescore_top`` best are scored on all of dev.
4. Iterative resampling (the paper's Monte-Carlo search): each round, the
   ``resample_top`` best get ``variations`` paraphrases each, scored on dev.
The prompt with the best dev accuracy wins. Reference defaults: the repo's
instruction-induction script (3 x 30 proposals, 20 screening rows, no resampling).
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizers.base import register_optimizer, require_positive
from optimizers.optimizer_llm import clean_prompt
from optimizers.text_run import TextOptimizer, TextRun

PROPOSAL_STEM = "The instruction was to"


@dataclass(frozen=True)
class APEOptions:
    proposal_requests: int = 3
    demos_per_request: int = 5
    proposals_per_request: int = 30
    screen_examples: int = 20
    rescore_top: int = 30
    #: rounds of iterative resampling (0 in the reference repo; matched budget: until spent)
    resample_rounds: int = 0
    resample_top: int = 10
    variations: int = 3
    temperature: float = 0.9
    top_p: float = 0.9
    max_tokens: int = 50
    max_reasoning_tokens: int = 512
    n_dev: int | None = None

    def __post_init__(self):
        require_positive(self, "proposal_requests", "demos_per_request", "proposals_per_request", "screen_examples",
                     "rescore_top", "resample_top", "variations", "max_tokens", "max_reasoning_tokens")
        if self.resample_rounds < 0:
            raise ValueError(f"resample_rounds must be >= 0, got {self.resample_rounds}")


def proposal_meta_prompt(demos) -> str:
    pairs = "\n\n".join(f"Input: {e.question}\nOutput: {e.gold}" for e in demos)
    return (
        "I gave a friend an instruction and some inputs. My friend followed the instruction and "
        f"wrote an output for each input. Here are the input-output pairs:\n\n{pairs}\n\n"
        "What was the instruction? Reply with the instruction only."
    )


def variation_meta_prompt(instruction: str) -> str:
    return (
        "Write a variation of the following instruction that keeps its meaning. Reply with the new "
        f"instruction only.\n\nInput: {instruction}\n\nOutput:"
    )


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


class APERun(TextRun):
    name = "ape"

    def run(self) -> dict:
        state = self.resume() or {"step": 0, "proposals": [], "screen": {}, "dev": {}, "trajectory": [], "stopped": None}
        stages = [self._propose, self._screen, self._rescore] + [self._resample] * self.o.resample_rounds
        while state["step"] < len(stages) and not state["stopped"]:
            stages[state["step"]](state)
            state["step"] += 1
            self._record(state)
            self.save(state)
        scored = state["dev"] or state["screen"]
        ranked = sorted(scored, key=lambda p: -scored[p]) or state["proposals"][:1]
        prompt, selection = self.select_on_dev(ranked[: self.o.rescore_top])
        return self.result(prompt, selection, state["trajectory"], state["stopped"] or "steps", initial="")

    def _propose(self, state) -> None:
        requests = [proposal_meta_prompt(self.rng.sample(list(self.data.train), min(self.o.demos_per_request, len(self.data.train))))
                    for _ in range(self.o.proposal_requests)]
        samples = self.llm.sample_many(requests, self.o.proposals_per_request, self.o.temperature, self.o.max_tokens,
                                       self.o.top_p, assistant_prefix=PROPOSAL_STEM)
        proposals = [clean_prompt(first_line(s)) for group in samples for s in group]
        state["proposals"] = list(dict.fromkeys(p for p in proposals if p))
        state["rejected"] = sum(p is None for p in proposals)

    def _screen(self, state) -> None:
        rows = self.dev()[: self.o.screen_examples]
        fitting = self.affordable(state["proposals"], rows)
        for prompt, evaluation in zip(fitting, self.score_all(fitting, rows, "screen")):
            state["screen"][prompt] = evaluation.accuracy
        if len(state["screen"]) < len(state["proposals"]):
            state["stopped"] = "budget"

    def _rescore(self, state) -> None:
        top = sorted(state["screen"], key=lambda p: -state["screen"][p])[: self.o.rescore_top]
        self._score_on_dev(state, top)

    def _resample(self, state) -> None:
        top = sorted(state["dev"], key=lambda p: -state["dev"][p])[: self.o.resample_top]
        if not top:
            state["stopped"] = "budget"
            return
        samples = self.llm.sample_many([variation_meta_prompt(p) for p in top], self.o.variations,
                                       self.o.temperature, self.o.max_tokens, self.o.top_p)
        new = [p for p in dict.fromkeys(clean_prompt(first_line(s)) for group in samples for s in group)
               if p and p not in state["dev"]]
        self._score_on_dev(state, new)

    def _score_on_dev(self, state, prompts) -> None:
        fitting = self.affordable(prompts, self.dev())
        for prompt, evaluation in zip(fitting, self.score_all(fitting, self.dev(), "dev")):
            state["dev"][prompt] = evaluation.accuracy
        if len(fitting) < len(prompts):
            state["stopped"] = "budget"

    def _record(self, state) -> None:
        pool = state["dev"] or state["screen"]
        best = max(pool, key=pool.get) if pool else ""
        state["trajectory"].append({"step": state["step"], "prompt": best, "score": pool.get(best, 0.0),
                                    "scored_on": "dev" if state["dev"] else "screen",
                                    "candidates": len(state["proposals"]), "task_calls": self.budget.task_calls,
                                    "optimizer_calls": self.budget.optimizer_calls})
        self.progress(state["step"], best, pool.get(best, 0.0))


@register_optimizer("ape")
class APE(TextOptimizer):
    Options = APEOptions
    Run = APERun
