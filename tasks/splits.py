"""Deterministic train / dev / test splits, written once as id lists.

A split file records the task, the sha256 of every data file it was made from, and the
ids of each split. Every rule and method reads the same file, so all see the same rows;
a split file made from other data is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from model_engine.provenance import write_json_atomic
from suite_errors import DataError
from tasks.base import Example, SplitIds, Task
from tasks.data import resolve_data_root

SPLIT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskData:
    """What an optimizer may see: train and dev rows only."""

    task: Task
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    data_sha256: dict[str, str]


def _examples_and_splits(task: Task, root: Path, split_file, allow_download: bool):
    examples = task.read_examples(root, allow_download)
    by_id = {row.id: row for rows in examples.values() for row in rows}
    checksums = task.data_checksums(root)
    split = task.split_ids(examples) if split_file is None else read_split_file(split_file, task, checksums)
    check_disjoint(split, split_file or f"of {task.name}")
    missing = [row_id for ids in (split.train, split.dev, split.test) for row_id in ids if row_id not in by_id]
    if missing:
        raise DataError(f"Split file {split_file} names rows absent from the data, e.g. {missing[:3]}.")
    return by_id, split, checksums


def load_task_data(name_or_task, data_root=None, split_file=None, allow_download: bool = True) -> TaskData:
    """Train and dev examples of a task (from ``split_file`` when given)."""
    from tasks import get_task

    task = name_or_task if isinstance(name_or_task, Task) else get_task(name_or_task)
    by_id, split, checksums = _examples_and_splits(task, resolve_data_root(data_root), split_file, allow_download)
    return TaskData(
        task=task,
        train=tuple(by_id[i] for i in split.train),
        dev=tuple(by_id[i] for i in split.dev),
        data_sha256=checksums,
    )


def load_split_examples(task: Task, data_root, split_file, which: str, allow_download: bool = True):
    by_id, split, _ = _examples_and_splits(task, resolve_data_root(data_root), split_file, allow_download)
    return tuple(by_id[i] for i in getattr(split, which))


def split_record(task: Task, data_root=None, allow_download: bool = True) -> dict:
    root = resolve_data_root(data_root)
    split = task.split_ids(task.read_examples(root, allow_download))
    return {
        "format_version": SPLIT_FORMAT_VERSION,
        "task": task.name,
        "data_sha256": task.data_checksums(root),
        "sizes": {"train": len(split.train), "dev": len(split.dev), "test": len(split.test)},
        "train": list(split.train),
        "dev": list(split.dev),
        "test": list(split.test),
    }


def write_splits(name_or_task, path, data_root=None, allow_download: bool = True) -> Path:
    """Write the task's split file atomically, so a half-written file is never read."""
    from tasks import get_task

    task = name_or_task if isinstance(name_or_task, Task) else get_task(name_or_task)
    return write_json_atomic(path, split_record(task, data_root, allow_download))


def read_split_file(path, task: Task, checksums: dict[str, str]) -> SplitIds:
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"Split file {path} does not exist; write it with write_splits first.") from None
    except json.JSONDecodeError as error:
        raise DataError(f"Split file {path} is not valid JSON ({error.msg}, line {error.lineno}).") from None
    if record.get("task") != task.name:
        raise DataError(f"Split file {path} is for task {record.get('task')!r}, not {task.name!r}.")
    if record.get("data_sha256") != checksums:
        raise DataError(
            f"Split file {path} was made from other data files than those under the data root "
            f"(recorded {record.get('data_sha256')}, found {checksums}); write the splits again."
        )
    missing = [name for name in ("train", "dev", "test") if not isinstance(record.get(name), list)]
    if missing:
        raise DataError(f"Split file {path} has no {', '.join(missing)} id list; write the splits again.")
    split = SplitIds(tuple(record["train"]), tuple(record["dev"]), tuple(record["test"]))
    check_disjoint(split, path)
    return split


def check_disjoint(split: SplitIds, source) -> None:
    """Train, dev and test must not share a row: an optimizer that saw a test row would have seen the answer."""
    parts = {"train": split.train, "dev": split.dev, "test": split.test}
    for name, ids in parts.items():
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise DataError(f"Split {source} lists rows twice in {name}, e.g. {repeated[:3]}.")
    for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = sorted(set(parts[first]) & set(parts[second]))
        if shared:
            raise DataError(f"Split {source} puts {len(shared)} rows in both {first} and {second}, e.g. "
                            f"{shared[:3]}: the optimizers would see rows they are tested on. Write the splits again.")
