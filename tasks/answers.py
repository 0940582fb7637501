"""Answer formats: how a model's output becomes an answer, and how answers compare.

Every format parses two kinds of text the same way, so a prompt is scored alike
during optimization and at test time:

1. a *continuation* written right after the task's extractor text
   (``"C"``, ``" $C$"``, ``"**Yes**."``, ``"(B) 12/25/1937"``, ``"1,234"``);
2. a *full response* in which the model states its answer somewhere
   (``"... so the answer is (C)."``).

The continuation's start wins; otherwise the last "answer is X" statement; otherwise
the last answer-like token near the end. ``parse`` returns the canonical answer or
``None`` when nothing valid was found (reported as the parse rate).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

# Decorations small models put around an answer: dollars from the extractor, markdown
# bold, quotes, brackets, and labels such as "Answer:".
_LEADING_NOISE = re.compile(r"""^[\s$*"'`(\[{:]*(?:(?:final\s+)?answer\s*(?:is|:)?|option|choice)?[\s$*"'`(\[{:]*""", re.I)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*(?:that\s+)?", re.I)
_TAIL_CHARS = 300  # how far back from the end the last-resort search looks


def _strip_leading_noise(text: str) -> str:
    return _LEADING_NOISE.sub("", text, count=1)


def _after_last_answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    return text[matches[-1].end():] if matches else None


class AnswerFormat(ABC):
    """Parses answers of one type and compares them by exact match."""

    #: stable identifier used in configs, reports and lm-eval task files
    kind: str

    @property
    def options(self) -> tuple[str, ...] | None:
        """Every valid canonical answer of a closed answer set; None when answers are open."""
        return None

    @abstractmethod
    def _parse_start(self, text: str) -> str | None:
        """The answer at the very start of ``text`` (already stripped of noise)."""

    @abstractmethod
    def _parse_last(self, text: str) -> str | None:
        """The last answer-like token anywhere in ``text``."""

    @abstractmethod
    def canonical(self, answer: str) -> str:
        """The canonical form of a gold or parsed answer."""

    def parse(self, text: str) -> str | None:
        if not text or not text.strip():
            return None
        found = self._parse_start(_strip_leading_noise(text))
        if found is None:
            after = _after_last_answer_is(text)
            if after is not None:
                found = self._parse_start(_strip_leading_noise(after))
        if found is None:
            found = self._parse_last(text[-_TAIL_CHARS:])
        return None if found is None else self.canonical(found)

    def parse_strict(self, continuation: str) -> str | None:
        """The answer only if it opens the text after the extractor (decorations aside)."""
        if not continuation or not continuation.strip():
            return None
        found = self._parse_start(_strip_leading_noise(continuation))
        return None if found is None else self.canonical(found)

    def is_correct(self, output: str, gold: str) -> bool:
        predicted = self.parse(output)
        return predicted is not None and predicted == self.canonical(gold)


@dataclass(frozen=True)
class MultipleChoice(AnswerFormat):
    """Option letters such as ``(A)``..``(R)``; gold ``(C)`` becomes ``C``.

    Gold answers that are not letters (three free-text BBH labels) stay verbatim and
    can never be matched: they count as wrong for every method alike.
    """

    letters: str
    kind: str = field(default="multiple_choice", init=False)

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self.letters)

    def _letter_pattern(self) -> str:
        return f"[{self.letters}]"

    def _parse_start(self, text: str) -> str | None:
        # The letter must stand alone: "A" in "Alice" or "(A)lice" is not an answer.
        match = re.match(rf"({self._letter_pattern()})(?![A-Za-z])", text)
        return match.group(1) if match else None

    def _parse_last(self, text: str) -> str | None:
        matches = re.findall(rf"\(({self._letter_pattern()})\)", text)
        return matches[-1] if matches else None

    def canonical(self, answer: str) -> str:
        answer = answer.strip()
        match = re.fullmatch(r"\(?([A-Z])\)?", answer)
        return match.group(1) if match else answer


@dataclass(frozen=True)
class Label(AnswerFormat):
    """A closed set of words: Yes/No, True/False, valid/invalid, True/False/Uncertain.

    Matching is case-insensitive and whole-word, longest label first, so "invalid" is
    never read as "valid". ``aliases`` maps other words to a label ("unknown" ->
    "Uncertain").
    """

    labels: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()
    kind: str = field(default="label", init=False)

    @property
    def options(self) -> tuple[str, ...]:
        return self.labels

    def _words(self) -> dict[str, str]:
        words = {label.lower(): label for label in self.labels}
        words.update((alias.lower(), label) for alias, label in self.aliases)
        return words

    def _pattern(self) -> str:
        alternatives = sorted(self._words(), key=len, reverse=True)
        return r"\b(" + "|".join(re.escape(a) for a in alternatives) + r")\b"

    def _parse_start(self, text: str) -> str | None:
        match = re.match(self._pattern(), text, re.I)
        return match.group(1) if match else None

    def _parse_last(self, text: str) -> str | None:
        matches = re.findall(self._pattern(), text, re.I)
        return matches[-1] if matches else None

    def canonical(self, answer: str) -> str:
        return self._words().get(answer.strip().lower(), answer.strip())


_NUMBER = r"-?\s?\d[\d,]*(?:\.\d+)?"


@dataclass(frozen=True)
class Integer(AnswerFormat):
    """Integers (GSM8K, object_counting, multistep_arithmetic_two); ``1,234`` == ``1234``."""

    kind: str = field(default="integer", init=False)

    def _parse_start(self, text: str) -> str | None:
        match = re.match(_NUMBER, text)
        return match.group(0) if match else None

    def _parse_last(self, text: str) -> str | None:
        matches = re.findall(_NUMBER, text)
        return matches[-1] if matches else None

    def canonical(self, answer: str) -> str:
        number = answer.replace(",", "").replace(" ", "").strip().rstrip(".")
        try:
            value = float(number)
        except ValueError:
            return answer.strip()
        return str(int(value)) if value == int(value) else number


@dataclass(frozen=True)
class FreeText(AnswerFormat):
    """Free text compared after normalisation (word_sorting, dyck_languages).

    The answer is the rest of the line. ``symbols`` compares character by character
    ignoring spaces (closing brackets); otherwise words are compared lower-cased.
    """

    symbols: bool = False
    kind: str = field(default="free_text", init=False)

    def _parse_start(self, text: str) -> str | None:
        line = text.strip().split("\n", 1)[0]
        line = re.sub(r"[$*]+", " ", line).strip().strip("\"'`").rstrip(".").strip()
        return line or None

    def _parse_last(self, text: str) -> str | None:
        lines = [line for line in text.strip().split("\n") if line.strip()]
        return self._parse_start(lines[-1]) if lines else None

    def canonical(self, answer: str) -> str:
        if self.symbols:
            return " ".join(ch for ch in answer if not ch.isspace())
        return " ".join(answer.lower().split())
