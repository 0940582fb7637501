"""The task abstraction: examples, answer format, extractor text, deterministic splits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from suite_errors import DataError
from tasks.answers import AnswerFormat
from tasks.data import DataFile, locate, sha256_file
from tasks.extractors import DEFAULT_VARIANT, Extractor, pick


@dataclass(frozen=True)
class Example:
    """One benchmark row. ``id`` is ``<file without extension>#<row index>``."""

    id: str
    question: str
    gold: str


@dataclass(frozen=True)
class SplitIds:
    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Task(ABC):
    """A benchmark task. One subclass per task family reads that family's files."""

    name: str
    answer_format: AnswerFormat
    #: the fixed text after the model's reasoning that makes it state its final answer,
    #: one per variant (``tasks.extractors``); part of the harness, never of the prompt
    extractors: tuple[Extractor, ...]

    family: ClassVar[str]

    @property
    @abstractmethod
    def data_files(self) -> tuple[DataFile, ...]:
        """The upstream files this task reads."""

    @abstractmethod
    def _read(self, paths: dict[str, Path]) -> dict[str, list[Example]]:
        """Examples per data file (keyed by relpath), in file order."""

    @abstractmethod
    def _split(self, examples: dict[str, list[Example]]) -> SplitIds:
        """The protocol's split of the examples into train, dev and test ids."""

    def read_examples(self, root: Path, allow_download: bool = True) -> dict[str, list[Example]]:
        paths = {f.relpath: locate(f, root, allow_download) for f in self.data_files}
        return self._read(paths)

    def data_checksums(self, root: Path) -> dict[str, str]:
        return {f.relpath: sha256_file(root / f.relpath) for f in self.data_files}

    def split_ids(self, examples: dict[str, list[Example]]) -> SplitIds:
        return self._split(examples)

    def extractor(self, variant: str = DEFAULT_VARIANT) -> Extractor:
        return pick(self.extractors, variant)

    def target_text(self, gold: str, variant: str = DEFAULT_VARIANT) -> str:
        """What follows the extractor for a correct answer (the training target's tail)."""
        return self.extractor(variant).continuation(self.answer_format.canonical(gold))

    def choices(self, variant: str = DEFAULT_VARIANT) -> tuple[str, ...] | None:
        """The continuation of every valid answer after the extractor (closed answer sets), else None.

        Aligned with ``answer_format.options``: the answer step picks the one the model
        finds most likely, in the harness and in lm-eval's ``multiple_choice`` pass alike.
        """
        options = self.answer_format.options
        return None if options is None else tuple(self.extractor(variant).continuation(o) for o in options)

    def parse_answer(self, continuation: str, reasoning: str = "") -> str | None:
        """The answer after the extractor; failing that, the one stated in the reasoning.

        Small models often answer in their reasoning ("... so the answer is Yes.") and
        then write something else after the extractor; both steps are the harness's.
        """
        answer = self.answer_format.parse(continuation)
        return answer if answer is not None or not reasoning else self.answer_format.parse(reasoning)

    def chosen(self, choice_logprobs) -> str:
        """The valid answer whose continuation the model found most likely (ties: the first listed)."""
        options = self.answer_format.options
        if options is None or len(choice_logprobs) != len(options):
            raise ValueError(f"{self.name}: expected one log-likelihood per option {options}, got {choice_logprobs}")
        return options[max(range(len(options)), key=lambda i: (choice_logprobs[i], -i))]

    def is_correct(self, continuation: str, gold: str, reasoning: str = "") -> bool:
        answer = self.parse_answer(continuation, reasoning)
        return answer is not None and answer == self.answer_format.canonical(gold)


def positional_split(rows: list[Example], n_train: int, n_dev: int) -> tuple[list[str], list[str], list[str]]:
    """First ``n_train`` rows train, the next dev rows, the rest test.

    When fewer than ``n_train + 2 * n_dev`` rows exist (three small BBH tasks), dev gets
    half of what remains after train so that test keeps the other half.
    """
    ids = [row.id for row in rows]
    remaining = len(ids) - n_train
    if remaining < 2:
        raise DataError(f"{len(ids)} rows cannot be split into train ({n_train}), dev and test.")
    dev_size = min(n_dev, remaining // 2)
    return ids[:n_train], ids[n_train:n_train + dev_size], ids[n_train + dev_size:]


def split_with_separate_test(
    examples: dict[str, list[Example]], train_file: str, test_file: str, n_train: int, n_dev: int
) -> SplitIds:
    """Train and dev from the head of ``train_file`` in file order; all of ``test_file`` as test."""
    train_ids = [row.id for row in examples[train_file]]
    if len(train_ids) < n_train + n_dev:
        raise DataError(f"{train_file} has {len(train_ids)} rows; train and dev need {n_train + n_dev}.")
    return SplitIds(
        tuple(train_ids[:n_train]),
        tuple(train_ids[n_train:n_train + n_dev]),
        tuple(row.id for row in examples[test_file]),
    )
