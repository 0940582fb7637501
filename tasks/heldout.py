"""The evaluation path: the only way to read a task's test rows.

Optimizers must never import this module; the leakage tests check that no test row
reaches a model during optimization.
"""

from __future__ import annotations

from tasks.base import Example
from tasks.splits import load_split_examples


def load_test_examples(name_or_task, data_root=None, split_file=None, allow_download: bool = True) -> tuple[Example, ...]:
    from tasks import get_task
    from tasks.base import Task

    task = name_or_task if isinstance(name_or_task, Task) else get_task(name_or_task)
    return load_split_examples(task, data_root, split_file, "test", allow_download)
