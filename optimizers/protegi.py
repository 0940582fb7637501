"""ProTeGi / APO: prompt optimization with textual gradients (Pryzant et al. 2023).

Each round, for every prompt in the beam: score it on a random train minibatch;
``gradient_groups`` times, show the optimizer LLM a group of its errors and ask for the
reasons it failed (the textual gradient, in <START>/<END> tags); for each reason ask
for an edited prompt; paraphrase the edits and the parent (Monte-Carlo step). At most
``max_expansion`` new prompts per parent join the pool, and a bandit (UCB, or brute
force) on train samples picks the ``beam_size`` best as the next beam. The final
beam is compared on dev. Each stage runs for the whole beam at once (one scoring call,
one optimizer-LLM call per kind of request), so the model decodes in full batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimizers.ape import first_line, variation_meta_prompt
from optimizers.base import register_optimizer, require_positive
from optimizers.optimizer_llm import clean_prompt, parse_tagged
from optimizers.text_run import TextOptimizer, TextRun

REASONING_CHARS = 400  # the model's reasoning shown per error, truncated


@dataclass(frozen=True)
class ProTeGiOptions:
    rounds: int = 6
    beam_size: int = 4
    minibatch: int = 64
    gradient_groups: int = 4
    errors_per_group: int = 4
    reasons_per_group: int = 1
    edits_per_reason: int = 1
    paraphrases: int = 2
    max_expansion: int = 8
    #: "ucb" (bandit over train samples) or "brute_force" (every candidate on the same rows)
    selection: str = "ucb"
    bandit_rounds: int = 8
    arms_per_round: int = 8
    samples_per_pull: int = 32
    ucb_c: float = 1.0
    temperature: float = 0.7
    max_tokens: int = 1024
    initial_prompt: str = "Let's think step by step."
    max_reasoning_tokens: int = 512
    n_dev: int | None = None

    def __post_init__(self):
        require_positive(self, "rounds", "beam_size", "minibatch", "gradient_groups", "errors_per_group", "reasons_per_group",
                     "edits_per_reason", "max_expansion", "bandit_rounds", "arms_per_round", "samples_per_pull",
                     "max_tokens", "max_reasoning_tokens")
        if self.paraphrases < 0:
            raise ValueError(f"paraphrases must be >= 0, got {self.paraphrases}")
        if self.selection not in ("ucb", "brute_force"):
            raise ValueError(f"selection must be one of ucb, brute_force, got {self.selection!r}")


def error_block(errors) -> str:
    return "\n\n".join(
        f"## Example {i + 1}\nQuestion: {e['question']}\nCorrect answer: {e['gold']}\n"
        f"Model's answer: {e['answer']}\nModel's reasoning: {e['reasoning'][:REASONING_CHARS]}"
        for i, e in enumerate(errors)
    )


def gradient_meta_prompt(prompt: str, errors, reasons: int) -> str:
    return (
        "I am writing an instruction that is added after each question to help a language model answer it.\n"
        f'My current instruction is: "{prompt}"\n\nWith it, the model gets these examples wrong:\n\n'
        f"{error_block(errors)}\n\nGive {reasons} reason(s) why the instruction could have led to these mistakes. "
        "Wrap each reason with <START> and <END>."
    )


def edit_meta_prompt(prompt: str, errors, reason: str, edits: int) -> str:
    return (
        "I am writing an instruction that is added after each question to help a language model answer it.\n"
        f'My current instruction is: "{prompt}"\n\nWith it, the model gets these examples wrong:\n\n'
        f"{error_block(errors)}\n\nThe problem with the instruction is: {reason}\n\n"
        f"Based on this, write {edits} improved instruction(s). Wrap each with <START> and <END>."
    )


class ProTeGiRun(TextRun):
    name = "protegi"

    def run(self) -> dict:
        reserve = self.dev_reserve(self.o.beam_size)
        state = self.resume() or {"step": 0, "beam": [self.o.initial_prompt], "means": {}, "trajectory": [],
                                  "stopped": None, "rejected": 0}
        while state["step"] < self.o.rounds and not state["stopped"]:
            pool = list(state["beam"])
            for children in self._expand(state["beam"], state, reserve):
                pool += [c for c in children if c not in pool]
            if not state["stopped"]:
                state["beam"], state["means"] = self._select(pool, state, reserve)
            state["step"] += 1
            state["trajectory"].append({"step": state["step"], "prompt": state["beam"][0], "beam": state["beam"],
                                        "pool": len(pool), "train_estimates": state["means"],
                                        "rejected_so_far": state["rejected"], "task_calls": self.budget.task_calls,
                                        "optimizer_calls": self.budget.optimizer_calls})
            self.progress(state["step"], state["beam"][0], state["means"].get(state["beam"][0], 0.0),
                          f" beam {len(state['beam'])} pool {len(pool)}")
            self.save(state)
        prompt, selection = self.select_on_dev(state["beam"])
        return self.result(prompt, selection, state["trajectory"], state["stopped"] or "steps", self.o.initial_prompt)

    def _expand(self, parents: list[str], state, reserve: int) -> list[list[str]]:
        """Textual gradients, edits and paraphrases of each beam prompt (its new prompts).

        Parents whose minibatch no longer fits the budget are left out, and the run stops
        after this round (``state["stopped"]``).
        """
        train, scored, total = list(self.data.train), [], 0
        for parent in parents:
            minibatch = self.rng.sample(train, min(self.o.minibatch, len(train)))
            total += self.cost(parent, minibatch)
            if not self.budget.can_afford(total + reserve):
                state["stopped"] = "budget"
                break
            scored.append((parent, minibatch))
        errors = {}
        for (parent, minibatch), evaluation in zip(scored, self.score_pairs(scored, "minibatch")):
            errors[parent] = [
                {"question": e.question, "gold": e.gold, "answer": a or "(no answer)", "reasoning": r.strip()}
                for e, a, ok, r in zip(minibatch, evaluation.answers, evaluation.correct, evaluation.reasoning) if not ok]
        learning = [parent for parent, _ in scored if errors[parent]]  # a parent with no errors has nothing to learn
        groups = [(parent, self.rng.sample(errors[parent], min(self.o.errors_per_group, len(errors[parent]))))
                  for parent in learning for _ in range(self.o.gradient_groups)]
        feedback = self.llm.sample_many([gradient_meta_prompt(p, g, self.o.reasons_per_group) for p, g in groups],
                                        1, self.o.temperature, self.o.max_tokens) if groups else []
        reasons = [(p, g, r) for (p, g), (text,) in zip(groups, feedback)
                   for r in parse_tagged(text, "<START>", "<END>")[: self.o.reasons_per_group]]
        state["rejected"] += sum(1 for (text,) in feedback if not parse_tagged(text, "<START>", "<END>"))
        edits: dict[str, list[str]] = {parent: [] for parent in learning}
        if reasons:
            edited = self.llm.sample_many([edit_meta_prompt(p, g, r, self.o.edits_per_reason) for p, g, r in reasons],
                                          1, self.o.temperature, self.o.max_tokens)
            for (parent, _, _), (text,) in zip(reasons, edited):
                parsed = parse_tagged(text, "<START>", "<END>")[: self.o.edits_per_reason]
                state["rejected"] += not parsed
                edits[parent] += parsed
        paraphrased: dict[str, list[str]] = {parent: [] for parent in learning}
        if self.o.paraphrases and learning:
            sources = [(parent, s) for parent in learning for s in dict.fromkeys(edits[parent] + [parent])]
            samples = self.llm.sample_many([variation_meta_prompt(s) for _, s in sources], self.o.paraphrases,
                                           self.o.temperature, self.o.max_tokens)
            for (parent, _), group in zip(sources, samples):
                paraphrased[parent] += [p for p in (clean_prompt(first_line(s)) for s in group) if p]
        expansions = []
        for parent in learning:
            children = [c for c in dict.fromkeys(edits[parent] + paraphrased[parent]) if c != parent]
            if len(children) > self.o.max_expansion:
                children = self.rng.sample(children, self.o.max_expansion)
            expansions.append(children)
        return expansions

    def _select(self, pool: list[str], state, reserve: int) -> tuple[list[str], dict]:
        """Bandit best-arm identification on train samples; the beam is the top ``beam_size``."""
        if len(pool) <= self.o.beam_size:  # everything fits in the beam: nothing to select
            return pool, state["means"]
        train = list(self.data.train)
        totals = {p: 0.0 for p in pool}
        pulls = {p: 0 for p in pool}
        if self.o.selection == "brute_force":
            rows = self.rng.sample(train, min(self.o.samples_per_pull, len(train)))
            fitting = self.affordable(pool, rows, reserve)
            for arm, evaluation in zip(fitting, self.score_all(fitting, rows, "select")):
                totals[arm], pulls[arm] = evaluation.accuracy, 1
        else:
            for round_ in range(self.o.bandit_rounds):
                if round_ == 0:
                    arms = self.rng.sample(pool, min(self.o.arms_per_round, len(pool)))
                else:
                    total_pulls = sum(pulls.values())
                    bound = {p: (totals[p] / pulls[p] + self.o.ucb_c * math.sqrt(math.log(total_pulls) / pulls[p]))
                             if pulls[p] else math.inf for p in pool}
                    arms = sorted(pool, key=lambda p: -bound[p])[: self.o.arms_per_round]
                rows = self.rng.sample(train, min(self.o.samples_per_pull, len(train)))
                fitting = self.affordable(arms, rows, reserve)
                for arm, evaluation in zip(fitting, self.score_all(fitting, rows, "select")):
                    totals[arm] += evaluation.accuracy
                    pulls[arm] += 1
                if len(fitting) < len(arms):
                    state["stopped"] = "budget"
                    break
        means = {p: totals[p] / pulls[p] for p in pool if pulls[p]}
        ranked = sorted(means, key=lambda p: -means[p]) or pool
        return ranked[: self.o.beam_size], means


@register_optimizer("protegi")
class ProTeGi(TextOptimizer):
    Options = ProTeGiOptions
    Run = ProTeGiRun
