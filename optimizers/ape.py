"""APE: Automatic Prompt Engineer (Zhou et al. 2022), propose-then-select with resampling.

1. Proposal: the optimizer LLM sees ``demos_per_request`` (question, answer) pairs from
   train and completes "The instruction was to ..."; ``proposal_requests`` requests of
   ``proposals_per_request`` samples each. The shared initial prompt joins the pool.
2. Screening: every unique proposal is scored on the first ``screen_examples`` dev rows.
3. The ``rescore_top`` best are scored on the shared dev rows.
4. Iterative resampling (the paper's Monte-Carlo search): each round, the
   ``resample_top`` best get ``variations`` paraphrases each, scored on dev.
The prompt with the best dev accuracy wins. Reference defaults: the repo's
instruction-induction script (3 x 30 proposals, 20 screening rows, no resampling).
"""

from __future__ import annotations

from pydantic import Field

from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import OptimizerOptions
from optimizers.optimizer_llm import clean_prompt

PROPOSAL_STEM = "The instruction was to"


class APEOptions(OptimizerOptions):
    proposal_requests: int = Field(3, ge=1, description="proposal requests, each with its own demonstrations")
    demos_per_request: int = Field(5, ge=1, description="train (question, answer) pairs per proposal request")
    proposals_per_request: int = Field(30, ge=1, description="samples per proposal request")
    screen_examples: int = Field(20, ge=1, description="dev rows every proposal is screened on")
    rescore_top: int = Field(30, ge=1, description="best screened proposals scored on all shared dev rows")
    resample_rounds: int = Field(0, ge=0, description="rounds of iterative resampling (0 in the reference repo)")
    resample_top: int = Field(10, ge=1, description="best prompts paraphrased per resampling round")
    variations: int = Field(3, ge=1, description="paraphrases per prompt and round")
    temperature: float = Field(0.9, ge=0, description="optimizer-LLM sampling temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="optimizer-LLM nucleus sampling")
    max_tokens: int = Field(50, ge=1, description="optimizer-LLM completion length")


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


@register_optimizer("ape")
class APE(Optimizer):
    Options = APEOptions
    uses_optimizer_llm = True
    test_options = {"proposal_requests": 1, "proposals_per_request": 3, "screen_examples": 2, "rescore_top": 2,
                    "resample_rounds": 5, "resample_top": 2, "variations": 2, "max_tokens": 32}

    def schedule(self, run) -> int:
        return 3 + self.options.resample_rounds

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        # the initial prompt and one proposal screened, then both rescored on dev, the initial
        # prompt's unscored dev rows held back at each stage
        screen = min(self.options.screen_examples, n_dev)
        return max(2 * screen + n_dev, 3 * n_dev - screen)

    def start(self, run) -> dict:
        return {"proposals": [run.initial_prompt], "screen": {}, "dev": {}, "rejected": 0}

    def step(self, run, state) -> None:
        stages = {1: self._propose, 2: self._screen, 3: self._rescore}
        stages.get(run.step_index, self._resample)(run, state)
        pool, split = (state["dev"], "dev") if state["dev"] else (state["screen"], "screen")
        if pool:
            best = max(pool, key=pool.get)
            run.record(best, pool[best], split, candidates=len(state["proposals"]), rejected_so_far=state["rejected"])
        else:
            run.record(run.initial_prompt, None, None, candidates=len(state["proposals"]))

    def _propose(self, run, state) -> None:
        o = self.options
        requests = [proposal_meta_prompt(run.rng.sample(run.train, min(o.demos_per_request, len(run.train))))
                    for _ in range(o.proposal_requests)]
        samples = run.llm.sample_many(requests, o.proposals_per_request, o.temperature, o.max_tokens, o.top_p,
                                      assistant_prefix=PROPOSAL_STEM)
        proposals = [clean_prompt(first_line(s)) for group in samples for s in group]
        state["proposals"] = list(dict.fromkeys(state["proposals"] + [p for p in proposals if p]))
        state["rejected"] += sum(p is None for p in proposals)

    def _screen(self, run, state) -> None:
        rows = run.dev[: self.options.screen_examples]
        for prompt, evaluation in run.score_affordable(state["proposals"], rows, "screen"):
            state["screen"][prompt] = evaluation.accuracy

    def _rescore(self, run, state) -> None:
        top = sorted(state["screen"], key=lambda p: -state["screen"][p])[: self.options.rescore_top]
        self._score_on_dev(run, state, top)

    def _resample(self, run, state) -> None:
        o = self.options
        top = sorted(state["dev"], key=lambda p: -state["dev"][p])[: o.resample_top]
        if not top:
            run.stop("exhausted", "no prompt was scored on dev to resample from")
            return
        samples = run.llm.sample_many([variation_meta_prompt(p) for p in top], o.variations, o.temperature,
                                      o.max_tokens, o.top_p)
        new = [p for p in dict.fromkeys(clean_prompt(first_line(s)) for group in samples for s in group)
               if p and p not in state["dev"]]
        self._score_on_dev(run, state, new)

    def _score_on_dev(self, run, state, prompts) -> None:
        for prompt, evaluation in run.score_affordable(prompts, run.dev, "dev"):
            state["dev"][prompt] = evaluation.accuracy

    def final_candidates(self, run, state) -> list[str]:
        scored = state.get("dev") or state.get("screen") or {}
        ranked = sorted(scored, key=lambda p: -scored[p])
        return ranked[: self.options.rescore_top] or state.get("proposals", [])[:1]
