"""GReaTer: gradients over reasoning (Das et al., ICLR 2025), after the reference code.

Each step edits one token of the prompt, left to right (see
``../shared/reference/greater_spec.md`` §2):

1. propose candidate tokens for the position from the model's own next-token
   distribution given question + prompt prefix: a token is a candidate if it is in the
   top-k of every example of one of ``topq`` random 5-example groups (k grows by 2
   until there are 6); special, added and non-word tokens are never proposed;
2. roll out greedy reasoning with the current prompt (cached: it is the previous
   winner's);
3. loss = cross-entropy of the gold answer after the extractor (logits / tau) plus
   lambda x the prompt's mean negative log-likelihood;
4. rank candidates by the gradient of that loss with respect to the one-hot token at
   the position, taken through the embedding row (weights frozen);
5. evaluate the ``candidates_per_step`` best with fresh rollouts: training error
   (teacher-forced argmax on the answer) + 0.02 x prompt NLL; keep the best;
6. advance: past the end, grow with a placeholder, or wrap to the start after a period.

The equal terms bind the edits: an edit or a growth whose text ``terms.max_prompt_chars``
(or the task model's context) refuses is never rolled out; the next-ranked candidate
takes its place, and a prompt that may not grow wraps to the start.

The reference's bugs are fixed; where the faithful behaviour differs it stays available
behind an option (``ppl_targets="previous"``, ``scoring_context="reference"``). The
``final_candidates`` lowest-objective prompts the run saw go to the shared final
choice on dev. GReaTer starts from the shared initial prompt (the reference starts from
its own longer text: set ``terms.initial_prompt`` to it to reproduce the paper) and
optimizes with the task model itself: it uses no optimizer LLM.
"""

from __future__ import annotations

from itertools import islice
from typing import Literal

from pydantic import Field

from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import OptimizerOptions

class GreaterOptions(OptimizerOptions):
    n_train: int = Field(50, ge=1, description="train rows of the gradient and of candidate evaluation")
    steps: int = Field(125, ge=1, description="token edits (a cap may end the run earlier)")
    topk: int = Field(40, ge=1, description="initial per-example top-k of the proposal (grows by 2 until min_candidates)")
    topq: int = Field(6, ge=1, description="random example groups whose top-k intersections are unioned")
    examples_per_group: int = Field(5, ge=1, description="examples per proposal group")
    min_candidates: int = Field(6, ge=1, description="proposal size that stops k from growing")
    candidates_per_step: int = Field(3, ge=1, description="gradient top-q: candidates evaluated with fresh rollouts")
    perplexity_weight: float = Field(0.2, ge=0, description="lambda: prompt perplexity weight in the gradient loss")
    selection_perplexity_weight: float = Field(0.02, ge=0, description="prompt perplexity weight in the selection objective")
    temperature: float = Field(0.2, gt=0, description="tau: the answer logits are divided by it in the gradient loss")
    final_candidates: int = Field(10, ge=1, description="lowest-objective prompts scored on dev at the end")
    grad_batch_size: int = Field(8, ge=1, description="examples per forward/backward micro-batch of the gradient")
    score_batch_size: int = Field(16, ge=1, description="sequences per teacher-forced scoring batch")
    accept: Literal["always", "improvement"] = Field(
        "always", description="always (reference: the best candidate replaces the token) or only on improvement")
    period_rule: bool = Field(True, description="reference rule: a candidate with '.' in the prompt's second half wins at once")
    ppl_targets: Literal["candidate", "previous"] = Field(
        "candidate", description="candidate (fixed) or previous (reference bug: NLL of the old prompt's ids)")
    scoring_context: Literal["clean", "reference"] = Field(
        "clean", description="clean (fixed) or reference (bug: every EOS/pad id removed from the scored context)")
    reuse_prefix_cache: bool = Field(True, description="compute each question's key/value states once (same results, faster)")
    # Options for small models: each changes the reference's algorithm, so each is off by default.
    restricted_error: bool = Field(
        False, description="training error decided among the task's valid answers only (closed answer sets: the "
                           "harness's decision; an answer longer than one token is decided by its first)")
    break_ties_by_answer_loss: bool = Field(
        False, description="ties in the selection objective go to the lower answer cross-entropy")
    roundtrip_filter: bool = Field(
        False, description="drop candidates whose prompt text does not re-tokenize to the same ids "
                           "(dev and test read the text, so they would score other tokens)")

    def deviations(self) -> list[str]:
        return [text for on, text in (
            (self.restricted_error, "training error decided among the valid answers only"),
            (self.break_ties_by_answer_loss, "selection ties broken by the answer cross-entropy"),
            (self.roundtrip_filter, "candidates that do not re-tokenize to the same ids are dropped"),
            (self.accept == "improvement", "a candidate replaces the token only when it improves the objective"),
        ) if on]


@register_optimizer("greater")
class Greater(Optimizer):
    Options = GreaterOptions
    test_options = {"n_train": 3, "steps": 3, "final_candidates": 2, "topk": 5, "grad_batch_size": 3}

    def schedule(self, run) -> int:
        return self.options.steps

    def affordable_steps(self, max_task_calls: int, dev_rows: int) -> int:
        """The steps a task-call budget guarantees, for sizing configs: the initial prompt on
        the train rows, then at most (``candidates_per_step`` + 1) x ``n_train`` per step (the
        candidates, and the current prompt's rollouts when it has grown by a placeholder),
        with the dev reserve kept back (the final candidates and the initial prompt on
        ``dev_rows``). A run may make more steps."""
        o = self.options
        spare = max_task_calls - o.n_train - (o.final_candidates + 1) * dev_rows
        return max(0, min(o.steps, spare // ((o.candidates_per_step + 1) * o.n_train)))

    def dev_candidates(self) -> int:
        return self.options.final_candidates

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        rows = min(self.options.n_train, n_train)  # the initial prompt's rollouts, then one step's candidates
        return rows * (1 + self.options.candidates_per_step) + self.dev_reserve(n_dev)

    def prepare(self, run) -> None:
        from optimizers.greater_gradient import GradientSearch  # torch: only when a run starts

        self.search = GradientSearch(self.options, run)

    def start(self, run) -> dict:
        prompt = self.search._segment(run.initial_prompt)
        (initial,) = self.search.evaluate([prompt], prompt)
        state = {"prompt": prompt, "pos": 0, "n0": len(prompt), "seen": [initial], "current": initial}
        self._record(run, run.initial_prompt, initial, position=0)
        return state

    def step(self, run, state) -> None:
        search, o = self.search, self.options
        prompt, pos = list(state["prompt"]), state["pos"]
        ids = [e.id for e in search.examples]
        # the candidates, and the current prompt's own rollouts when it has just grown by a placeholder
        cost = o.candidates_per_step * len(ids) + len(run.budget.uncharged(prompt, ids))
        if not run.budget.can_afford(cost + run.reserve()):
            run.stop("task_calls", f"the next step needs {cost} task calls and {run.reserve()} are reserved for dev; "
                                   f"{run.budget.remaining_task_calls()} remain")
            return
        (reasoning,) = search.rollouts([prompt])
        candidates, k = search.propose(prompt, pos)
        scores = search.gradient_scores(prompt, pos, candidates, reasoning)
        order = sorted(range(len(candidates)), key=lambda j: (float(scores[j]), candidates[j]))
        # the equal terms bind token edits too: an edit whose text is refused (terms.max_prompt_chars, the
        # context) is passed over for the next-ranked candidate, never rolled out
        allowed = (c for c in (candidates[j] for j in order)
                   if not run.refusal(search.text(prompt[:pos] + [c] + prompt[pos + 1:])))
        chosen = list(islice(allowed, o.candidates_per_step))
        period_at = None
        if o.period_rule and pos >= 0.5 * state["n0"]:
            period_at = next((i for i, c in enumerate(chosen) if "." in search.tokenizer.decode([c])), None)
            if period_at is not None:
                chosen = chosen[: period_at + 1]
        results = search.evaluate([prompt[:pos] + [c] + prompt[pos + 1:] for c in chosen], prompt) if chosen else []
        state["seen"] += results
        winner = results[-1] if period_at is not None else None
        if not results:  # every edit at this position is refused: the prompt stays
            winner = state["current"] | {"prompt": prompt}
        if winner is None:
            for result in results:  # ties go to the later candidate, as in the reference
                if winner is None or self._rank(result) <= self._rank(winner):
                    winner = result
        if o.accept == "improvement" and self._rank(winner) > self._rank(state["current"]):
            winner = state["current"] | {"prompt": prompt}
        new_prompt = winner["prompt"]
        pos += 1
        if pos == len(new_prompt):
            grown = new_prompt + [search.placeholder]
            if "." in search.tokenizer.decode([new_prompt[-1]]) or run.refusal(search.text(grown)):
                pos = 0  # wrap to the start after a period, or where growing would pass the prompt cap
            else:
                new_prompt = grown
        state.update(prompt=new_prompt, pos=pos, current=winner)
        self._record(run, search.text(winner["prompt"]), winner, position=pos, candidates_proposed=len(candidates),
                     candidates_evaluated=[search.tokenizer.decode([c]) for c in chosen], topk_used=k)

    def _rank(self, result: dict) -> tuple[float, ...]:
        """The selection objective; with ``break_ties_by_answer_loss``, the answer loss breaks ties."""
        if self.options.break_ties_by_answer_loss:
            return result["objective"], result["answer_loss"]
        return (result["objective"],)

    def _record(self, run, text: str, result: dict, **details) -> None:
        run.record(text, 1.0 - result["train_error"], "train", prompt_ids=list(result["prompt"]),
                   loss=result["objective"], train_error=result["train_error"], perplexity=result["perplexity"],
                   answer_loss=result["answer_loss"], **details)

    def final_candidates(self, run, state) -> list[str]:
        """The lowest-objective prompts the run saw (placeholders stripped), best first."""
        from optimizers.greater_gradient import PLACEHOLDER

        ranked = []
        for result in sorted(state.get("seen", []), key=self._rank):
            text = self.search.text(result["prompt"]).rstrip(PLACEHOLDER).strip()
            if text and text not in ranked:
                ranked.append(text)
            if len(ranked) == self.options.final_candidates:
                break
        return ranked
