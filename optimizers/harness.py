"""The shared scorer: one prompt slot, one extractor, one parser for every method.

``Harness.evaluate(prompt, examples)`` (``evaluate_many`` for several prompts in shared
batches) runs the task model's reasoning on each (question + prompt), appends the task's
extractor, lets the model write the answer and scores it with the task's parser. The
answer continues each row's decoding (``LocalModel.chat_and_answer``) instead of running
the conversation a second time. Each (prompt, example) pair is one task call, charged
to the budget once per run. Only train and dev rows ever reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_engine import GenerationParams
from optimizers.base import Budget
from tasks.prompt_slot import EXTRACTOR_SEPARATOR, user_message

ANSWER_TOKENS = 8  # the answer after the extractor is short: a letter, a word, a number


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    correct: tuple[bool, ...]
    answers: tuple[str | None, ...]
    #: share of examples with a valid parsed answer
    parse_rate: float
    #: the model's reasoning per example (feedback methods show it to the optimizer LLM)
    reasoning: tuple[str, ...] = ()


class Harness:
    def __init__(self, task, model, budget: Budget, max_reasoning_tokens: int = 512, answer_tokens: int = ANSWER_TOKENS):
        self.task, self.model, self.budget = task, model, budget
        self.reasoning_params = GenerationParams(max_new_tokens=max_reasoning_tokens)
        self.answer_params = GenerationParams(max_new_tokens=answer_tokens, stop=("\n",))

    def conversation(self, question: str, prompt: str) -> list[dict]:
        return [{"role": "user", "content": user_message(question, prompt)}]

    def evaluate(self, prompt: str, examples) -> Evaluation:
        return self.evaluate_many([(prompt, examples)])[0]

    def evaluate_many(self, requests: list[tuple[str, list]]) -> list[Evaluation]:
        """(prompt, examples) pairs scored together: all their rows share the engine's batches.

        Scoring many prompts on a few rows each (bandit pulls, screening) would otherwise
        decode in small batches that leave most of the machine idle.
        """
        for prompt, examples in requests:
            if not examples:
                raise ValueError("evaluate() needs at least one example")
            self.budget.charge_task_calls(prompt, [e.id for e in examples])
        rows = [(prompt, example) for prompt, examples in requests for example in examples]
        before = self.model.meter.total
        conversations = [self.conversation(e.question, prompt) for prompt, e in rows]
        reasoning = self.model.chat_and_answer(conversations, self.reasoning_params, self.task.extractor,
                                               self.answer_params, EXTRACTOR_SEPARATOR)
        outputs = [r.answer for r in reasoning]
        self.budget.task_usage = self.budget.task_usage + (self.model.meter.total - before)
        answers = [self.task.parse_answer(o.text, r.text) for o, r in zip(outputs, reasoning)]
        correct = [a is not None and a == self.task.answer_format.canonical(e.gold) for a, (_, e) in zip(answers, rows)]
        evaluations, start = [], 0
        for _, examples in requests:
            end = start + len(examples)
            evaluations.append(Evaluation(
                accuracy=sum(correct[start:end]) / len(examples),
                correct=tuple(correct[start:end]),
                answers=tuple(answers[start:end]),
                parse_rate=sum(a is not None for a in answers[start:end]) / len(examples),
                reasoning=tuple(r.text for r in reasoning[start:end]),
            ))
            start = end
        return evaluations
