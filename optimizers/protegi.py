"""ProTeGi / APO: prompt optimization with textual gradients (Pryzant et al. 2023).

Each round, for every prompt in the beam: score it on a random train minibatch;
``gradient_groups`` times, show the optimizer LLM a group of its errors and ask for the
reasons it failed (the textual gradient, in <START>/<END> tags); for each reason ask
for an edited prompt; paraphrase the edits and the parent (Monte-Carlo step). At most
``max_expansion`` new prompts per parent join the pool, and a bandit (UCB as in the
reference: counts in samples, t = the bandit round; or brute force) on train samples
picks the ``beam_size`` best as the next beam. The final beam goes to the shared
choice on dev. Each stage runs for the whole beam at once (one scoring call, one
optimizer-LLM call per kind of request), so the model decodes in full batches.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from optimizers.ape import first_line, variation_meta_prompt
from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import OptimizerOptions
from optimizers.optimizer_llm import clean_prompt, parse_tagged

REASONING_CHARS = 400  # the model's reasoning shown per error, truncated


class BeamOptions(OptimizerOptions):
    """Beam search with bandit selection on train samples (shared by ProTeGi and MAPO)."""

    rounds: int = Field(6, ge=1, description="expansion rounds (a cap may end the run earlier)")
    beam_size: int = Field(4, ge=1, description="prompts kept after each round")
    minibatch: int = Field(64, ge=1, description="train rows each beam prompt is run on to find its errors")
    gradient_groups: int = Field(4, ge=1, description="textual-gradient requests per beam prompt")
    max_expansion: int = Field(8, ge=1, description="new prompts kept per parent")
    selection: Literal["ucb", "ucb-e", "brute_force"] = Field(
        "ucb", description="bandit over train samples (ucb, ucb-e) or every candidate on the same rows")
    bandit_rounds: int = Field(8, ge=1, description="bandit rounds per selection")
    arms_per_round: int = Field(8, ge=1, description="prompts pulled per bandit round")
    samples_per_pull: int = Field(32, ge=1, description="train rows per pull")
    ucb_c: float = Field(1.0, ge=0, description="UCB exploration constant")
    temperature: float = Field(0.7, ge=0, description="optimizer-LLM sampling temperature")
    max_tokens: int = Field(1024, ge=1, description="optimizer-LLM completion length")


class ProTeGiOptions(BeamOptions):
    errors_per_group: int = Field(4, ge=1, description="wrong answers shown per gradient request")
    reasons_per_group: int = Field(1, ge=1, description="reasons asked for per gradient request")
    edits_per_reason: int = Field(1, ge=1, description="edited prompts asked for per reason")
    paraphrases: int = Field(2, ge=0, description="Monte-Carlo paraphrases per edit and parent")


def ucb_choose(totals: list[float], counts: list[float], n: int, t: int, c: float, rng, mode: str = "ucb") -> list[int]:
    """The arms a UCB bandit pulls in round ``t`` (the reference's ``UCBBandits.choose``).

    ``counts`` are in samples and ``totals`` the summed rewards; with nothing pulled yet
    the arms are drawn at random. ``t`` is the bandit round (0-based), so round 1 is
    greedy (ln 1 = 0) and exploration grows from round 2.
    """
    if sum(counts) == 0:
        return rng.sample(range(len(counts)), n)
    means = [total / count if count else 0.0 for total, count in zip(totals, counts)]
    if mode == "ucb":
        bound = [m + c * math.sqrt(math.log(t) / (count + 1e-3)) for m, count in zip(means, counts)]
    else:  # ucb-e
        bound = [m + c * math.sqrt(c / (count + 1e-3)) for m, count in zip(means, counts)]
    return sorted(range(len(counts)), key=lambda i: (-bound[i], i))[:n]


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


@register_optimizer("protegi")
class ProTeGi(Optimizer):
    Options = ProTeGiOptions
    uses_optimizer_llm = True
    test_options = {"rounds": 2, "beam_size": 2, "minibatch": 4, "gradient_groups": 1, "bandit_rounds": 2,
                    "arms_per_round": 2, "samples_per_pull": 2, "paraphrases": 1, "max_tokens": 48}

    def schedule(self, run) -> int:
        return self.options.rounds

    def dev_candidates(self) -> int:
        return self.options.beam_size

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        # the first round: the initial prompt's minibatch, then every bandit pull (a round cut short
        # keeps the old beam); brute force scores the whole pool once
        o = self.options
        rounds, arms = (1, 1 + o.max_expansion) if o.selection == "brute_force" else (
            o.bandit_rounds, min(o.arms_per_round, 1 + o.max_expansion))
        return (min(o.minibatch, n_train) + rounds * arms * min(o.samples_per_pull, n_train)
                + self.dev_reserve(n_dev))

    def start(self, run) -> dict:
        return {"beam": [run.initial_prompt], "means": {}, "rejected": 0}

    def step(self, run, state) -> None:
        pool = list(state["beam"])
        for children in self.expand(run, state):
            pool += [c for c in children if c not in pool]
        if run.stopped is None:
            state["beam"], state["means"] = self.select(run, pool)
        best = state["beam"][0]
        run.record(best, state["means"].get(best), "train" if best in state["means"] else None,
                   beam=state["beam"], pool=len(pool), train_estimates=state["means"], rejected_so_far=state["rejected"])

    def final_candidates(self, run, state) -> list[str]:
        return state.get("beam", [])

    def minibatch_errors(self, run, parents: list[str]) -> dict[str, list[dict]]:
        """Each parent's wrong answers on its own random train minibatch (parents that fit the budget)."""
        scored, total = [], 0
        for parent in parents:
            minibatch = run.rng.sample(run.train, min(self.options.minibatch, len(run.train)))
            total += run.cost(parent, minibatch)
            if not run.budget.can_afford(total + run.reserve()):
                run.stop("task_calls", "the beam's minibatches no longer fit the budget")
                break
            scored.append((parent, minibatch))
        return {parent: [{"question": e.question, "gold": e.gold, "answer": a or "(no answer)", "reasoning": r.strip(),
                          "correct": ok}
                         for e, a, ok, r in zip(rows, ev.answers, ev.correct, ev.reasoning)]
                for (parent, rows), ev in zip(scored, run.score_pairs(scored, "minibatch"))}

    def expand(self, run, state) -> list[list[str]]:
        """Textual gradients, edits and paraphrases of each beam prompt (its new prompts)."""
        o = self.options
        outcomes = self.minibatch_errors(run, state["beam"])
        errors = {parent: [r for r in rows if not r["correct"]] for parent, rows in outcomes.items()}
        learning = [parent for parent in outcomes if errors[parent]]  # a parent with no errors has nothing to learn
        groups = [(parent, run.rng.sample(errors[parent], min(o.errors_per_group, len(errors[parent]))))
                  for parent in learning for _ in range(o.gradient_groups)]
        feedback = run.llm.sample_many([gradient_meta_prompt(p, g, o.reasons_per_group) for p, g in groups],
                                       1, o.temperature, o.max_tokens) if groups else []
        reasons = [(p, g, r) for (p, g), (text,) in zip(groups, feedback)
                   for r in parse_tagged(text, "<START>", "<END>")[: o.reasons_per_group]]
        state["rejected"] += sum(1 for (text,) in feedback if not parse_tagged(text, "<START>", "<END>"))
        edits: dict[str, list[str]] = {parent: [] for parent in learning}
        if reasons:
            edited = run.llm.sample_many([edit_meta_prompt(p, g, r, o.edits_per_reason) for p, g, r in reasons],
                                         1, o.temperature, o.max_tokens)
            for (parent, _, _), (text,) in zip(reasons, edited):
                parsed = parse_tagged(text, "<START>", "<END>")[: o.edits_per_reason]
                state["rejected"] += not parsed
                edits[parent] += parsed
        paraphrased: dict[str, list[str]] = {parent: [] for parent in learning}
        if o.paraphrases and learning:
            sources = [(parent, s) for parent in learning for s in dict.fromkeys(edits[parent] + [parent])]
            samples = run.llm.sample_many([variation_meta_prompt(s) for _, s in sources], o.paraphrases,
                                          o.temperature, o.max_tokens)
            for (parent, _), group in zip(sources, samples):
                paraphrased[parent] += [p for p in (clean_prompt(first_line(s)) for s in group) if p]
        return [self.limit(run, [c for c in dict.fromkeys(edits[p] + paraphrased[p]) if c != p]) for p in learning]

    def limit(self, run, children: list[str]) -> list[str]:
        if len(children) > self.options.max_expansion:
            return run.rng.sample(children, self.options.max_expansion)
        return children

    def select(self, run, pool: list[str]) -> tuple[list[str], dict[str, float]]:
        """Bandit best-arm identification on train samples; the beam is the top ``beam_size``."""
        o = self.options
        if len(pool) <= o.beam_size:  # everything fits in the beam: nothing to select
            return pool, {}
        totals, counts = [0.0] * len(pool), [0.0] * len(pool)
        rounds = 1 if o.selection == "brute_force" else o.bandit_rounds
        for round_ in range(rounds):
            if o.selection == "brute_force":
                arms = list(range(len(pool)))
            else:
                arms = ucb_choose(totals, counts, min(o.arms_per_round, len(pool)), round_, o.ucb_c, run.rng,
                                  o.selection)
            rows = run.rng.sample(run.train, min(o.samples_per_pull, len(run.train)))
            prompts = [pool[i] for i in arms]
            fitting = run.affordable(prompts, rows)
            for arm, evaluation in zip(arms, run.score_all(fitting, rows, "train")):
                totals[arm] += evaluation.accuracy * len(rows)
                counts[arm] += len(rows)
            if len(fitting) < len(prompts):
                run.stop("task_calls", "the bandit's next pulls no longer fit the budget")
                break
        means = {pool[i]: totals[i] / counts[i] for i in range(len(pool)) if counts[i]}
        ranked = sorted(range(len(pool)), key=lambda i: (-(totals[i] / counts[i] if counts[i] else 0.0), i))
        return [pool[i] for i in ranked[: o.beam_size]], means
