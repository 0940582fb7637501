"""What every backend shares: decoding parameters, completions, caching, accounting."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from model_engine.cache import GenerationCache, cache_key
from model_engine.usage import Usage, UsageMeter

#: a conversation: a single user message, or OpenAI-style message dicts
Conversation = str | Sequence[dict]


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    #: generation ends before the first occurrence of any of these strings
    stop: tuple[str, ...] = ()
    #: 0 means greedy decoding
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    #: distinguishes repeated samples of one request in the cache
    sample_index: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def cache_fields(self) -> dict:
        fields = asdict(self)
        if self.greedy:  # greedy output does not depend on sampling settings
            for name in ("top_p", "seed", "sample_index"):
                fields.pop(name)
        return fields


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    #: "stop" (EOS or a stop string) or "length" (max_new_tokens reached)
    finish_reason: str
    #: the generated token ids (local models; without the end-of-sequence token)
    token_ids: tuple[int, ...] | None = None
    #: the answer written after an appended extractor (``LocalModel.chat_and_answer``); its
    #: prompt_tokens count only the appended tokens
    answer: Completion | None = None
    #: log-likelihood of each listed choice after the extractor (closed answer sets)
    choice_logprobs: tuple[float, ...] | None = None
    cached: bool = field(default=False, compare=False)

    def total_tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens, the answer's included."""
        if self.answer is None:
            return self.prompt_tokens, self.completion_tokens
        return self.prompt_tokens + self.answer.prompt_tokens, self.completion_tokens + self.answer.completion_tokens


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    positions = [text.find(s) for s in stop if s and s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def as_messages(conversation: Conversation) -> list[dict]:
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    return [dict(message) for message in conversation]


class Backend(ABC):
    """A model that turns conversations into completions, with cache and accounting."""

    #: identifies the model's weights (or endpoint) in cache keys and provenance
    identity: str
    #: strings that end a reasoning (a base model's plain layout stops at the next question)
    reasoning_stop: tuple[str, ...] = ()

    def __init__(self, cache: GenerationCache | None = None, meter: UsageMeter | None = None):
        self.cache = cache
        self.meter = meter if meter is not None else UsageMeter()

    def chat(
        self,
        conversations: Sequence[Conversation],
        params: GenerationParams = GenerationParams(),
        sample_indices: Sequence[int] | None = None,
        assistant_prefix: str = "",
    ) -> list[Completion]:
        """One completion per conversation, in order. Cached answers are not charged.

        ``sample_indices`` tells repeated samples of one conversation apart (temperature
        > 0); ``assistant_prefix`` starts the assistant's reply, and the completion is
        what follows it.
        """
        requests = [as_messages(c) for c in conversations]
        if sample_indices is None:
            sample_indices = [params.sample_index] * len(requests)
        keyed = [{"messages": r, "prefix": assistant_prefix, "sample": i if not params.greedy else 0}
                 for r, i in zip(requests, sample_indices)]

        def generate(missing: list[dict], params: GenerationParams) -> list[Completion]:
            return self._generate_chat([m["messages"] for m in missing], params,
                                       [m["sample"] for m in missing], assistant_prefix)

        return self._cached("chat", keyed, params, generate)

    @abstractmethod
    def _generate_chat(self, requests: list[list[dict]], params: GenerationParams, sample_indices: list[int],
                       assistant_prefix: str) -> list[Completion]:
        """Generate for all requests (none of them cached)."""

    def _cached(self, kind, requests, params: GenerationParams, generate) -> list[Completion]:
        fields = params.cache_fields()
        keys = [cache_key(self.identity, [kind, request], fields) for request in requests]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        results = {key: _restored(value) for key, value in hits.items()}
        missing = list(dict.fromkeys(key for key in keys if key not in results))
        if missing:
            index_of = {key: keys.index(key) for key in missing}
            started = time.perf_counter()
            produced = generate([requests[index_of[key]] for key in missing], params)
            elapsed = time.perf_counter() - started
            fresh = dict(zip(missing, produced, strict=True))
            self.meter.record(
                Usage(
                    calls=len(produced),
                    prompt_tokens=sum(c.total_tokens()[0] for c in produced),
                    completion_tokens=sum(c.total_tokens()[1] for c in produced),
                    seconds=elapsed,
                )
            )
            if self.cache is not None:
                self.cache.put_many({key: _storable(c) for key, c in fresh.items()})
            results.update(fresh)
        served = [results[key].total_tokens() for key in keys if key in hits]
        if served:
            self.meter.record(Usage(cached_calls=len(served), cached_prompt_tokens=sum(p for p, _ in served),
                                    cached_completion_tokens=sum(c for _, c in served)))
        return [results[key] for key in keys]


def _storable(completion: Completion) -> dict:
    stored = asdict(completion)
    stored.pop("cached")
    if stored["answer"] is not None:
        stored["answer"].pop("cached")
    return stored


def _restored(stored: dict) -> Completion:
    token_ids, answer, choices = stored.get("token_ids"), stored.get("answer"), stored.get("choice_logprobs")
    return Completion(**{**stored, "token_ids": tuple(token_ids) if token_ids is not None else None,
                         "choice_logprobs": tuple(choices) if choices is not None else None,
                         "answer": _restored(answer) if answer is not None else None}, cached=True)
