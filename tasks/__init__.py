"""Task registry: all 27 BBH tasks, GSM8K and FOLIO.

A task family is one module in this package that defines ``TASKS``, a list of
``Task`` objects; it is found automatically. Optimizers get train and dev rows through
``load_task_data``; test rows are reachable only through ``tasks.heldout``, the
evaluation path.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from suite_errors import UnknownNameError
from tasks.base import Example, SplitIds, Task
from tasks.splits import TaskData, load_task_data, write_splits

__all__ = ["Example", "SplitIds", "Task", "TaskData", "get_task", "load_task_data", "task_names", "write_splits"]


@cache
def _registry() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for task in getattr(module, "TASKS", ()):
            if task.name in found:
                raise RuntimeError(f"Task {task.name!r} is defined twice ({module.__name__})")
            found[task.name] = task
    return found


def task_names() -> list[str]:
    return sorted(_registry())


def get_task(name: str) -> Task:
    try:
        return _registry()[name]
    except KeyError:
        raise UnknownNameError("task", name, _registry()) from None
