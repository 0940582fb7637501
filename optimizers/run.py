"""The shared run: what every optimizer gets on equal terms, by construction.

``Run(optimizer, context).execute()`` drives one optimization:

1. the start: the method's ``start`` hook (step 0 always holds the shared initial prompt);
2. the loop: the ``step`` hook until the method's schedule ends, a cap is reached
   (``BudgetExhausted`` from either cap ends the run cleanly, never a crash), or nothing
   is left to try; a checkpoint after every step, so a killed run resumes where it was;
3. the final choice: the method's ranked candidates plus the shared initial prompt,
   scored on the same dev rows for every method, the best dev accuracy winning (ties go
   to the method's better-ranked prompt); task calls for it are reserved throughout;
4. the result: a ``PromptResult`` with the trajectory, the stop reason and the spend.

Methods score prompts only through ``score_all``, ``score_pairs`` or ``score_affordable`` (the shared
``Harness``: one prompt slot, one extractor, one parser, one reasoning limit) and write
prompts only through ``llm`` (the optimizer LLM, charged per completion).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict

from model_engine.provenance import environment
from optimizers.base import BudgetExhausted, OptionError, describe_model, log
from optimizers.contract import (
    ModelRecord,
    PromptResult,
    Provenance,
    RunContext,
    Selection,
    SelectionCandidate,
    Stopped,
    StopReason,
    TrajectoryStep,
)
from optimizers.harness import Evaluation, Harness

CHECKPOINT_VERSION = 2
#: consecutive steps that spend nothing before a run is stopped as exhausted
IDLE_STEPS = 20


class Run:
    def __init__(self, optimizer, context: RunContext):
        self.optimizer, self.o, self.context = optimizer, optimizer.options, context
        self.name = optimizer.name
        self.data, self.task, self.model = context.data, context.data.task, context.task_model
        self.budget, self.rng, self.terms, self.seed = context.budget, context.rng, context.terms, context.seed
        self.train = list(self.data.train)
        self.dev = list(self.data.dev[: self.terms.n_dev] if self.terms.n_dev else self.data.dev)
        if not self.dev and not optimizer.fixed:
            raise OptionError(f"{self.task.name} has no dev rows for the final choice")
        self.harness = Harness(self.task, self.model, self.budget, self.terms.max_reasoning_tokens,
                               self.terms.extractor_for(self.model.spec.name))
        self.optimizer_backend = None
        self.llm = None
        if optimizer.uses_optimizer_llm:
            from optimizers.optimizer_llm import OptimizerLLM

            self.optimizer_backend = context.optimizer_model if context.optimizer_model is not None else self.model
            self.llm = OptimizerLLM(self.optimizer_backend, self.budget, self.seed)
        self.scores: dict[tuple[str, str], Evaluation] = {}
        self._refusals: dict[str, str | None] = {}
        #: the row that makes a prompt's input longest (the context check's worst case)
        self._longest_row = max(self.train + self.dev, key=lambda e: len(e.question), default=None)
        self.trajectory: list[TrajectoryStep] = []
        self.state: dict = {}  # the method's state (its hooks' JSON-able dict)
        self.stopped: Stopped | None = None
        self.step_index = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self._started = time.perf_counter()

    @property
    def initial_prompt(self) -> str:
        return self.terms.initial_prompt

    # ---- scoring through the shared harness ---------------------------------------------------
    def refusal(self, prompt: str) -> str | None:
        """Why ``prompt`` is never run (None: it may be): longer than ``terms.max_prompt_chars``, or too
        long for the task model's context with the longest train or dev row. A refused prompt scores 0
        on every row, costs nothing and is never chosen."""
        if prompt not in self._refusals:
            reason = None
            if len(prompt) > self.terms.max_prompt_chars:
                reason = f"it has {len(prompt)} characters, more than terms.max_prompt_chars ({self.terms.max_prompt_chars})"
            elif self._longest_row is not None:
                reason = self.harness.overflow(prompt, self._longest_row)
            if reason is not None and prompt != self.initial_prompt:
                log.warning("[%s] a prompt is not run: %s: %r", self.name, reason, prompt[:200])
            self._refusals[prompt] = reason
        return self._refusals[prompt]

    def cost(self, prompt, rows) -> int:
        """Task calls that scoring ``prompt`` on ``rows`` would charge (charged pairs are free)."""
        if isinstance(prompt, str) and self.refusal(prompt):
            return 0
        return len(self.budget.uncharged(prompt, [e.id for e in rows]))

    def reserve(self) -> int:
        """Task calls kept back for the final choice on dev: the method's candidate slots, and the
        initial prompt unless it holds one of those slots now (it is not charged twice)."""
        slots = self.optimizer.dev_candidates()
        finals = self.optimizer.final_candidates(self, self.state)[:slots] if slots else []
        initial = 0 if self.initial_prompt in finals else self.cost(self.initial_prompt, self.dev)
        return slots * len(self.dev) + initial

    def affordable(self, prompts: list[str], rows, reserve: int | None = None) -> list[str]:
        """The longest head of ``prompts`` whose scoring on ``rows`` fits the budget, less the reserve."""
        reserve = self.reserve() if reserve is None else reserve
        total, fitting = 0, []
        for prompt in prompts:
            total += self.cost(prompt, rows)
            if not self.budget.can_afford(total + reserve):
                break
            fitting.append(prompt)
        return fitting

    def score_all(self, prompts: list[str], rows, split: str) -> list[Evaluation]:
        """Each prompt on the same rows, the unscored ones in one batched harness call."""
        return self.score_pairs([(prompt, rows) for prompt in prompts], split)

    def score_pairs(self, requests: list[tuple[str, list]], split: str) -> list[Evaluation]:
        """(prompt, rows) pairs; the ones not scored before in one batched harness call."""
        keys = [(prompt, split + ":" + ",".join(e.id for e in rows)) for prompt, rows in requests]
        for key, (prompt, rows) in zip(keys, requests):
            if key not in self.scores and self.refusal(prompt):
                self.scores[key] = Evaluation.not_run(len(rows))
        missing = {key: rows for key, (_, rows) in zip(keys, requests) if key not in self.scores}
        if missing:
            started = time.perf_counter()
            evaluations = self.harness.evaluate_many([(prompt, rows) for (prompt, _), rows in missing.items()])
            self.scores.update(zip(missing, evaluations))
            self.seconds["scoring"] += time.perf_counter() - started
        return [self.scores[key] for key in keys]

    def score_affordable(self, prompts: list[str], rows, split: str) -> list[tuple[str, Evaluation]]:
        """Score the head of ``prompts`` that fits the budget; stop the run if not all of them fit."""
        fitting = self.affordable(prompts, rows)
        if len(fitting) < len(prompts):
            self.stop("task_calls", f"{len(prompts) - len(fitting)} of {len(prompts)} prompts did not fit the "
                                    f"budget on {split} ({self.reserve()} task calls reserved for the final choice)")
        return list(zip(fitting, self.score_all(fitting, rows, split)))

    # ---- recording and stopping -------------------------------------------------------------------
    def record(self, prompt: str, score: float | None, split: str | None, **details) -> None:
        """The method's best prompt after this step, with its score and the split it was measured on."""
        step = TrajectoryStep(step=self.step_index, prompt=prompt, score=score, split=split,
                              task_calls=self.budget.task_calls, optimizer_calls=self.budget.optimizer_calls,
                              details=details)
        self.trajectory.append(step)
        shown = "unscored" if score is None else f"{score:.3f} on {split}"
        log.info("[%s] step %d: best %s, task calls %d/%s, optimizer calls %d, prompt %r", self.name, step.step,
                 shown, step.task_calls, self.budget.max_task_calls or "-", step.optimizer_calls, prompt)

    def stop(self, reason: StopReason, detail: str = "") -> None:
        if self.stopped is None:
            self.stopped = Stopped(reason=reason, detail=detail, task_calls=self.budget.task_calls,
                                   optimizer_calls=self.budget.optimizer_calls)
            log.info("[%s] stopping: %s%s", self.name, reason, f" ({detail})" if detail else "")

    # ---- the run -----------------------------------------------------------------------------------
    def execute(self) -> PromptResult:
        if self.optimizer.fixed:
            return self._fixed_result()
        refused = self.refusal(self.initial_prompt)
        if refused:  # before any generation: no method could run
            raise OptionError(f"The initial prompt {refused}; shorten it or lower terms.max_reasoning_tokens")
        shortfall = self.optimizer.budget_shortfall(self.budget.max_task_calls, len(self.train), len(self.dev))
        if shortfall:
            log.warning("[%s] %s", self.name, shortfall)
        self.optimizer.prepare(self)
        state = self._resume()
        if state is None:
            state = self._begin()
        self.state = state
        schedule = self.optimizer.schedule(self)
        idle = 0
        while self.stopped is None:
            if schedule is not None and self.step_index >= schedule:
                self.stop("schedule", f"the method's schedule of {schedule} steps ended")
                break
            before = (self.budget.task_calls, self.budget.optimizer_calls)
            self.step_index += 1
            try:
                self.optimizer.step(self, state)
            except BudgetExhausted as exhausted:
                self.stop(exhausted.resource, str(exhausted))
            idle = idle + 1 if (self.budget.task_calls, self.budget.optimizer_calls) == before else 0
            if idle >= IDLE_STEPS:
                self.stop("exhausted", f"{IDLE_STEPS} steps in a row found nothing new to score")
            self._save(state)
        prompt, selection = self.select_on_dev(self.optimizer.final_candidates(self, state))
        return self._result(prompt, selection)

    def _begin(self) -> dict:
        try:
            state = self.optimizer.start(self)
        except BudgetExhausted as exhausted:
            state = {}
            self.stop(exhausted.resource, str(exhausted))
        if not self.trajectory or self.trajectory[0].prompt != self.initial_prompt:
            self.trajectory.insert(0, TrajectoryStep(step=0, prompt=self.initial_prompt, task_calls=0, optimizer_calls=0))
        self._save(state)
        return state

    def select_on_dev(self, ranked: list[str]) -> tuple[str, Selection]:
        """The best on dev among the method's ranked prompts and the initial prompt, as the budget allows.

        Prompts already scored on dev cost nothing again. The initial prompt is always a
        candidate (its dev scoring is reserved throughout the run).
        """
        started = time.perf_counter()
        candidates = [p for p in dict.fromkeys(ranked) if p and p != self.initial_prompt and not self.refusal(p)]
        initial_cost = self.cost(self.initial_prompt, self.dev)
        fitting = self.affordable(candidates, self.dev, reserve=initial_cost)
        if self.budget.can_afford(initial_cost + sum(self.cost(p, self.dev) for p in fitting)):
            fitting.append(self.initial_prompt)
        scored = [SelectionCandidate(prompt=p, dev_accuracy=e.accuracy, dev_parse_rate=e.parse_rate)
                  for p, e in zip(fitting, self.score_all(fitting, self.dev, "dev"))]
        self.seconds["selection"] += time.perf_counter() - started
        if not scored:
            best = (candidates or [self.initial_prompt])[0]
            return best, Selection(n=0, rule="no budget left for dev: the method's own best, unscored",
                                   candidates=[SelectionCandidate(prompt=best)])
        best = max(scored, key=lambda c: c.dev_accuracy)  # ties: the earlier, better-ranked prompt
        methods_own = len(fitting) - (self.initial_prompt in fitting)
        rule = (f"best dev accuracy on the first {len(self.dev)} dev rows among the method's {methods_own} best-ranked "
                f"prompts{' and the initial prompt' if self.initial_prompt in fitting else ''} (ties: the better-ranked)")
        return best.prompt, Selection(n=len(self.dev), rule=rule, candidates=scored)

    def _result(self, prompt: str, selection: Selection | None) -> PromptResult:
        budget = self.budget.record()
        budget["seconds"] = {**self.seconds, "total": time.perf_counter() - self._started}
        optimizer_llm = None
        if self.optimizer_backend is not None:
            optimizer_llm = ModelRecord(**describe_model(self.optimizer_backend))
        return PromptResult(
            optimizer=self.name, task=self.task.name, model=self.model.spec.name, prompt=prompt,
            initial_prompt=self.initial_prompt, optimizer_llm=optimizer_llm, selection=selection,
            trajectory=self.trajectory, stopped=self.stopped, deviations=self.optimizer.deviations(self),
            budget=budget, provenance=self._provenance())

    def _fixed_result(self) -> PromptResult:
        prompt = self.optimizer.final_candidates(self, {})[0]
        log.info("[%s] prompt %r (fixed: nothing optimized, no budget spent)", self.name, prompt)
        self.trajectory = [TrajectoryStep(step=0, prompt=prompt, task_calls=0, optimizer_calls=0)]
        self.stop("fixed", "the method does not optimize")
        return self._result(prompt, None)

    def _provenance(self) -> Provenance:
        return Provenance(seed=self.seed, model=describe_model(self.model), environment=environment(),
                          options=self.o.model_dump(mode="json"), terms=self.terms.model_dump(mode="json"),
                          extractor=asdict(self.harness.extractor), data_sha256=self.data.data_sha256,
                          split_sizes={"train": len(self.data.train), "dev": len(self.data.dev)})

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _binding(self) -> dict:
        """What determines the run: a checkpoint written under anything else is refused."""
        rows = {"train": [e.id for e in self.data.train], "dev": [e.id for e in self.data.dev]}
        return {"optimizer": self.name, "task": self.task.name, "options": self.o.model_dump(mode="json"),
                "terms": self.terms.model_dump(mode="json"), "seed": self.seed,
                "max_task_calls": self.budget.max_task_calls, "max_optimizer_calls": self.budget.max_optimizer_calls,
                "task_model": describe_model(self.model),
                "optimizer_llm": describe_model(self.optimizer_backend) if self.optimizer_backend is not None else None,
                "data": {"sha256": self.data.data_sha256,
                         "rows": hashlib.sha256(json.dumps(rows).encode()).hexdigest()}}

    def _save(self, state: dict) -> None:
        checkpoint = self.context.checkpoint
        if checkpoint is None or checkpoint.path is None:
            return
        version, internal, gauss = self.rng.getstate()
        checkpoint.save({
            "version": CHECKPOINT_VERSION, "binding": self._binding(), "state": state,
            "run": {"step": self.step_index, "trajectory": [s.model_dump(mode="json") for s in self.trajectory],
                    "stopped": self.stopped.model_dump(mode="json") if self.stopped else None,
                    "llm_calls": self.llm.calls if self.llm else 0, "seconds": dict(self.seconds)},
            "rng": [version, list(internal), gauss], "budget": self.budget.state(),
        })

    def _resume(self) -> dict | None:
        checkpoint = self.context.checkpoint
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is None:
            return None
        if saved.get("version") != CHECKPOINT_VERSION:
            raise OptionError(f"Checkpoint {checkpoint.path} was written by another version; delete it to start afresh")
        binding = self._binding()
        differing = sorted(k for k in binding if saved["binding"].get(k) != binding[k])
        if differing:
            raise OptionError(f"Checkpoint {checkpoint.path} belongs to a run with other {', '.join(differing)}; "
                              "delete it to start afresh")
        version, internal, gauss = saved["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.budget.restore(saved["budget"])
        run = saved["run"]
        self.step_index = run["step"]
        self.trajectory = [TrajectoryStep(**s) for s in run["trajectory"]]
        self.stopped = Stopped(**run["stopped"]) if run["stopped"] else None
        self.seconds.update(run["seconds"])
        if self.llm is not None:
            self.llm.calls = run["llm_calls"]
        log.info("[%s] resuming after step %d (%s)", self.name, self.step_index, checkpoint.path)
        return saved["state"]

