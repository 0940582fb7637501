"""GSM8K: grade-school maths word problems with integer answers.

Split (GReaTer's protocol): train and dev are the first 100 and the next 100 rows of
``train.jsonl`` in file order; test is all of ``test.jsonl`` (1319 rows). The gold
answer is the integer after ``####`` in the worked solution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite_errors import DataError
from tasks.answers import Integer
from tasks.base import Example, SplitIds, Task, split_with_separate_test
from tasks import extractors
from tasks.data import DataFile, read_jsonl, require_fields

N_TRAIN, N_DEV = 100, 100
_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{}.jsonl"
TRAIN = DataFile("gsm8k/train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", _URL.format("train"))
TEST = DataFile("gsm8k/test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", _URL.format("test"))


@dataclass(frozen=True)
class GSM8KTask(Task):
    family = "gsm8k"

    @property
    def data_files(self) -> tuple[DataFile, ...]:
        return (TRAIN, TEST)

    def _read(self, paths: dict[str, Path]) -> dict[str, list[Example]]:
        examples = {}
        for relpath, path in paths.items():
            rows = []
            for index, (line, record) in enumerate(read_jsonl(path)):
                where = f"{path}:{line}"
                require_fields(record, ("question", "answer"), where)
                _, marker, final = record["answer"].rpartition("####")
                gold = final.strip().replace(",", "")
                if not marker or not gold.lstrip("-").isdigit():
                    raise DataError(f"{where}: malformed row, the answer has no integer after '####'.")
                rows.append(Example(f"{relpath.removesuffix('.jsonl')}#{index}", record["question"], gold))
            examples[relpath] = rows
        return examples

    def _split(self, examples: dict[str, list[Example]]) -> SplitIds:
        return split_with_separate_test(examples, TRAIN.relpath, TEST.relpath, N_TRAIN, N_DEV)


TASKS = [GSM8KTask("gsm8k", Integer(), extractors.integer("a positive or negative integer"))]
