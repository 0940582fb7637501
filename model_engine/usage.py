"""Accounting of model work: calls, cache hits, tokens and seconds.

Every backend records into a ``UsageMeter``; budgets (task calls, optimizer calls) are
built on its counters. Cache hits are counted apart and never charged.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class Usage:
    calls: int = 0  # completions the model actually produced
    cached_calls: int = 0  # completions served from the cache (not charged)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    # the tokens of completions served from the cache: the work a run stands for is the same warm or cold
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{key: getattr(self, key) + getattr(other, key) for key in asdict(self)})

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{key: getattr(self, key) - getattr(other, key) for key in asdict(self)})

    def to_dict(self) -> dict:
        return asdict(self)


class UsageMeter:
    """A thread-safe running total of ``Usage``."""

    def __init__(self) -> None:
        self._total = Usage()
        self._lock = threading.Lock()

    def record(self, usage: Usage) -> None:
        with self._lock:
            self._total = self._total + usage

    @property
    def total(self) -> Usage:
        with self._lock:
            return Usage(**asdict(self._total))
