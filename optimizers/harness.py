"""The shared scorer: one prompt slot, one extractor, one parser for every method.

``Harness.evaluate(prompt, examples)`` (``evaluate_many`` for several prompts in shared
batches) runs the task model's reasoning on each (question + prompt), appends the task's
extractor and reads the answer: for closed answer sets (letters, labels) the valid answer
the model finds most likely (lm-eval's ``multiple_choice`` decision), otherwise the
answer it writes, read by the task's parser. The
answer continues each row's decoding (``LocalModel.chat_and_answer``) instead of running
the conversation a second time. Each (prompt, example) pair is one task call, charged
to the budget once per run. Only train and dev rows ever reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_engine import GenerationParams
from optimizers.base import Budget
from tasks.extractors import DEFAULT_VARIANT
from tasks.prompt_slot import EXTRACTOR_SEPARATOR, user_message

ANSWER_TOKENS = 8  # the answer after the extractor is short: a letter, a word, a number


@dataclass(frozen=True)
class Evaluation:
    #: share of correct answers: for closed answer sets the valid answer the model finds
    #: most likely after the extractor; otherwise the generated answer (lenient parse)
    accuracy: float
    correct: tuple[bool, ...]
    answers: tuple[str | None, ...]
    #: share of examples with a valid answer under the accuracy's rule
    parse_rate: float
    #: the model's reasoning per example (feedback methods show it to the optimizer LLM)
    reasoning: tuple[str, ...] = ()
    #: share of generated answers that open the text after the extractor (strict)
    strict_parse_rate: float = 0.0
    #: share of generated answers found after the extractor or, failing that, in the reasoning
    lenient_parse_rate: float = 0.0
    #: accuracy of the generated answers under each rule
    strict_accuracy: float = 0.0
    lenient_accuracy: float = 0.0
    #: share of reasoning cut by the token limit
    truncated: float = 0.0

    @classmethod
    def not_run(cls, rows: int) -> Evaluation:
        """A prompt that was never run (``Run.refusal``): every row wrong, nothing parsed."""
        return cls(accuracy=0.0, correct=(False,) * rows, answers=(None,) * rows, parse_rate=0.0,
                   reasoning=("",) * rows)


class Harness:
    """Scores prompts on train/dev rows with the task model; the extractor variant is the model's."""

    def __init__(self, task, model, budget: Budget, max_reasoning_tokens: int = 512,
                 extractor_variant: str = DEFAULT_VARIANT, answer_tokens: int = ANSWER_TOKENS):
        self.task, self.model, self.budget = task, model, budget
        self.extractor = task.extractor(extractor_variant)
        self.choices = task.choices(extractor_variant) or ()
        self.reasoning_params = GenerationParams(max_new_tokens=max_reasoning_tokens, stop=model.reasoning_stop)
        self.answer_params = GenerationParams(max_new_tokens=answer_tokens, stop=("\n",))

    def conversation(self, question: str, prompt: str) -> list[dict]:
        return [{"role": "user", "content": user_message(question, prompt)}]

    def overflow(self, prompt: str, example) -> str | None:
        """Why ``prompt`` with ``example`` cannot fit the task model's context, leaving room for the
        reasoning, the extractor and the answer (None: it fits). Transformers would not cut the
        input: positions past the model's limit give garbage, not an error."""
        limit = self.model.context_length
        if limit is None:
            return None
        length = len(self.model.encode(self.model.render(self.conversation(example.question, prompt))))
        room = (self.reasoning_params.max_new_tokens + len(self.model.encode(" " + self.extractor.text))
                + self.answer_params.max_new_tokens)
        if length + room <= limit:
            return None
        return (f"with {self.task.name} row {example.id} takes {length} tokens, and with {room} more for the reasoning, "
                f"extractor and answer exceeds {self.model.spec.name}'s context of {limit} tokens")

    def evaluate(self, prompt: str, examples) -> Evaluation:
        return self.evaluate_many([(prompt, examples)])[0]

    def answer(self, completion) -> tuple[str | None, str | None, str | None]:
        """(scored, strict, lenient) answers of one reasoning completion with its answer."""
        continuation = completion.answer.text
        strict = self.task.answer_format.parse_strict(continuation)
        lenient = self.task.parse_answer(continuation, completion.text)
        scored = self.task.chosen(completion.answer.choice_logprobs) if self.choices else lenient
        return scored, strict, lenient

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
        reasoning = self.model.chat_and_answer(conversations, self.reasoning_params, self.extractor.text,
                                               self.answer_params, EXTRACTOR_SEPARATOR, self.choices)
        self.budget.task_usage = self.budget.task_usage + (self.model.meter.total - before)
        scored, strict, lenient = zip(*(self.answer(r) for r in reasoning))
        golds = [self.task.answer_format.canonical(e.gold) for _, e in rows]
        correct = [a is not None and a == g for a, g in zip(scored, golds)]
        cut = [r.finish_reason == "length" for r in reasoning]
        evaluations, start = [], 0
        for _, examples in requests:
            end, n = start + len(examples), len(examples)
            share = lambda values: sum(values[start:end]) / n  # noqa: E731
            evaluations.append(Evaluation(
                accuracy=share(correct),
                correct=tuple(correct[start:end]),
                answers=tuple(scored[start:end]),
                parse_rate=share([a is not None for a in scored]),
                reasoning=tuple(r.text for r in reasoning[start:end]),
                strict_parse_rate=share([a is not None for a in strict]),
                lenient_parse_rate=share([a is not None for a in lenient]),
                strict_accuracy=share([a == g for a, g in zip(strict, golds)]),
                lenient_accuracy=share([a == g for a, g in zip(lenient, golds)]),
                truncated=share(cut),
            ))
            start = end
        return evaluations
