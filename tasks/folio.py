"""FOLIO: first-order logic reasoning in natural language (True / False / Uncertain).

Split (GReaTer's protocol): train and dev are the first 100 and the next 100 rows of
``train.jsonl`` in file order; test is ``validation.jsonl`` (204 rows). The upstream
label "Unknown" is written "Uncertain", the word the question asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite_errors import DataError
from tasks.answers import Label
from tasks.base import Example, SplitIds, Task, split_with_separate_test
from tasks import extractors
from tasks.data import DataFile, read_jsonl, require_fields

N_TRAIN, N_DEV = 100, 100
LABELS = ("True", "False", "Uncertain")
_UPSTREAM_LABELS = {"True": "True", "False": "False", "Unknown": "Uncertain", "Uncertain": "Uncertain"}
_URL = "https://raw.githubusercontent.com/Yale-LILY/FOLIO/main/data/v0.0/folio-{}.jsonl"
TRAIN = DataFile("folio/train.jsonl", "008d34b750d31fa7f014e953228adf4db81ec34bbda9e7f67c96c60438d1e6b2", _URL.format("train"))
TEST = DataFile("folio/validation.jsonl", "6922c988ef10987bd6545568ee8e63e897af80994591fa20539767da58f8e3d1", _URL.format("validation"))


def question_text(premises: list[str], conclusion: str) -> str:
    lines = "\n".join(f"- {premise.strip()}" for premise in premises)
    return (
        f"Premises:\n{lines}\nConclusion: {conclusion.strip()}\n"
        "Based only on the premises, is the conclusion True, False, or Uncertain?"
    )


@dataclass(frozen=True)
class FOLIOTask(Task):
    family = "folio"

    @property
    def data_files(self) -> tuple[DataFile, ...]:
        return (TRAIN, TEST)

    def _read(self, paths: dict[str, Path]) -> dict[str, list[Example]]:
        examples = {}
        for relpath, path in paths.items():
            rows = []
            for index, (line, record) in enumerate(read_jsonl(path)):
                where = f"{path}:{line}"
                require_fields(record, ("premises", "conclusion", "label"), where)
                premises = record["premises"]
                if not isinstance(premises, list) or not all(isinstance(p, str) for p in premises):
                    raise DataError(f"{where}: malformed row, 'premises' must be a list of strings.")
                label = _UPSTREAM_LABELS.get(record["label"])
                if label is None:
                    raise DataError(f"{where}: malformed row, unknown label {record['label']!r}.")
                question = question_text(premises, record["conclusion"])
                rows.append(Example(f"{relpath.removesuffix('.jsonl')}#{index}", question, label))
            examples[relpath] = rows
        return examples

    def _split(self, examples: dict[str, list[Example]]) -> SplitIds:
        return split_with_separate_test(examples, TRAIN.relpath, TEST.relpath, N_TRAIN, N_DEV)


TASKS = [FOLIOTask("folio", Label(LABELS, aliases=(("unknown", "Uncertain"),)), extractors.label(LABELS))]
