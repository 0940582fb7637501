"""The optimizer protocol, the lazy registry, the shared budget and checkpoints.

An optimizer is one file in this package: a subclass of ``Optimizer`` decorated with
``@register_optimizer("name")``, with an ``Options`` model (pydantic) and its own small
``test_options``. It is used as ``Optimizer(**options).optimize(context)`` and returns a
``PromptResult``. The shared run (``optimizers.run.Run``) owns everything that must be
equal across methods: the harness, the budget and its stops, the dev reserve, the final
choice on dev, checkpoints, progress and the result; a method supplies only its loop
through the hooks ``start``, ``step`` and ``final_candidates``.

The registry finds optimizers by reading the package's source files (no import), so
planning a workflow imports only the optimizer modules it needs, and never torch.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

from model_engine.provenance import write_json_atomic
from model_engine.usage import Usage
from optimizers.contract import OptimizerOptions, PromptResult, RunContext
from suite_errors import SuiteError, UnknownNameError

if TYPE_CHECKING:
    from optimizers.run import Run

log = logging.getLogger("optimizers")


class OptionError(SuiteError, ValueError):
    """An optimizer option that is unknown or out of range, or a checkpoint of another run."""


class BudgetExhausted(SuiteError):
    """Work would spend more than a cap allows; the shared run ends cleanly when it is raised."""

    def __init__(self, resource: str, message: str):
        self.resource = resource  # "task_calls" or "optimizer_calls": the stop reason
        super().__init__(message)


def prompt_key(prompt: str | tuple[int, ...] | list[int]) -> str:
    """A short stable key for a prompt given as text or as token ids."""
    payload = prompt if isinstance(prompt, str) else json.dumps(list(prompt))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Budget:
    """What a run spends, in the one unit every method shares, plus the rest.

    A *task call* is one rollout of the task model on one (prompt, example) pair from
    train or dev. A pair is charged once per run: repeating it (a cached rollout) is
    free, whether or not the engine's disk cache happened to be warm, so a run's
    spending never depends on earlier runs. The charged pairs are part of the
    checkpoint, so a resumed run spends exactly what an uninterrupted one does.
    """

    def __init__(self, max_task_calls: int | None = None, max_optimizer_calls: int | None = None):
        for name, value in (("max_task_calls", max_task_calls), ("max_optimizer_calls", max_optimizer_calls)):
            if value is not None and value < 0:
                raise OptionError(f"{name} must be >= 0, got {value}")
        self.max_task_calls, self.max_optimizer_calls = max_task_calls, max_optimizer_calls
        self.task_calls = 0
        self.optimizer_calls = 0
        self.forward_passes = 0
        self.backward_passes = 0
        #: tokens through teacher-forced forward / backward passes (gradient methods)
        self.forward_tokens = 0
        self.backward_tokens = 0
        self.task_usage = Usage()
        self.optimizer_usage = Usage()
        self._charged: set[str] = set()

    @staticmethod
    def _pair(prompt: str, example_id: str) -> str:
        return f"{prompt}|{example_id}"

    def uncharged(self, prompt, example_ids) -> list[str]:
        """The example ids whose pair with ``prompt`` (text or token ids) is not charged yet."""
        key = prompt_key(prompt)
        return [i for i in dict.fromkeys(example_ids) if self._pair(key, i) not in self._charged]

    def remaining_task_calls(self) -> int | None:
        return None if self.max_task_calls is None else self.max_task_calls - self.task_calls

    def can_afford(self, task_calls: int) -> bool:
        remaining = self.remaining_task_calls()
        return remaining is None or task_calls <= remaining

    def charge_task_calls(self, prompt, example_ids) -> int:
        """Charge the pairs not charged yet; refuse (charging nothing) beyond the budget."""
        key = prompt_key(prompt)
        new = self.uncharged(prompt, example_ids)
        if not self.can_afford(len(new)):
            raise BudgetExhausted("task_calls", f"{len(new)} more task calls would exceed the budget of "
                                                f"{self.max_task_calls} ({self.task_calls} spent)")
        self._charged.update(self._pair(key, i) for i in new)
        self.task_calls += len(new)
        return len(new)

    def charge_optimizer_calls(self, count: int) -> None:
        if self.max_optimizer_calls is not None and self.optimizer_calls + count > self.max_optimizer_calls:
            raise BudgetExhausted("optimizer_calls", f"{count} more optimizer calls would exceed the cap of "
                                                     f"{self.max_optimizer_calls} ({self.optimizer_calls} spent)")
        self.optimizer_calls += count

    def record(self) -> dict:
        return {
            "task_calls": self.task_calls,
            "max_task_calls": self.max_task_calls,
            "optimizer_calls": self.optimizer_calls,
            "max_optimizer_calls": self.max_optimizer_calls,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "forward_tokens": self.forward_tokens,
            "backward_tokens": self.backward_tokens,
            "task_model": self.task_usage.to_dict(),
            "optimizer_model": self.optimizer_usage.to_dict(),
        }

    def state(self) -> dict:
        return {**self.record(), "charged": sorted(self._charged)}

    def restore(self, state: dict) -> None:
        """Take over a checkpointed budget's spending (the caps stay this run's own)."""
        self.task_calls, self.optimizer_calls = state["task_calls"], state["optimizer_calls"]
        self.forward_passes, self.backward_passes = state["forward_passes"], state["backward_passes"]
        self.forward_tokens, self.backward_tokens = state["forward_tokens"], state["backward_tokens"]
        self.task_usage, self.optimizer_usage = Usage(**state["task_model"]), Usage(**state["optimizer_model"])
        self._charged = set(state["charged"])


class Checkpoint:
    """One JSON file of a run's state, replaced atomically after every step."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    @classmethod
    def beside(cls, result: str | Path) -> Checkpoint:
        """The default checkpoint of the run that writes ``result``: ``RESULT.checkpoint.json``."""
        return cls(f"{result}.checkpoint.json")

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as error:
            raise OptionError(f"Checkpoint {self.path} is not valid JSON ({error}); delete it to start afresh") from None

    def save(self, state: dict) -> None:
        if self.path is not None:
            write_json_atomic(self.path, state)


class Optimizer:
    """A prompt optimizer: options in the constructor, ``optimize(context)`` returns the result.

    Subclasses set ``Options`` and ``test_options`` and implement the hooks below; the
    shared ``Run`` calls them and owns budget, stops, selection, checkpoints and result.
    """

    name: ClassVar[str]  # set by @register_optimizer
    Options: ClassVar[type[OptimizerOptions]]
    #: small options for the contract test, the smoke config and the benchmarks
    test_options: ClassVar[dict[str, Any]] = {}
    #: whether the method asks an optimizer LLM for prompts (text-feedback methods)
    uses_optimizer_llm: ClassVar[bool] = False
    #: a fixed prompt: nothing is optimized, nothing is spent, no dev choice is made
    fixed: ClassVar[bool] = False

    def __init__(self, **options: Any):
        self.options = parse_options(self.Options, options, self.name)

    def optimize(self, context: RunContext) -> PromptResult:
        from optimizers.run import Run

        return Run(self, context).execute()

    # ---- hooks ---------------------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        """Set up per-run machinery that the checkpoint does not hold (called on start and on resume)."""

    def start(self, run: Run) -> dict:
        """The method's initial state (JSON-able). It may score the initial prompt and record step 0."""
        return {}

    def step(self, run: Run, state: dict) -> None:
        """One step of the method's loop: spend, then ``run.record(...)``; ``run.stop(...)`` when done."""
        raise NotImplementedError

    def schedule(self, run: Run) -> int | None:
        """The method's own number of steps (None: until a cap or nothing is left to try)."""
        return None

    def final_candidates(self, run: Run, state: dict) -> list[str]:
        """The method's own ranking of its prompts, best first; the best on dev among them wins."""
        raise NotImplementedError

    def dev_candidates(self) -> int:
        """How many final candidates may still need scoring on dev (the shared dev reserve)."""
        return 0

    def dev_reserve(self, n_dev: int) -> int:
        """The most task calls the shared final choice holds back: the candidate slots and the initial prompt."""
        return (self.dev_candidates() + 1) * n_dev

    def minimum_task_calls(self, n_train: int, n_dev: int) -> int:
        """Task calls that guarantee one step scoring a prompt of the method's own, with the final
        choice on ``n_dev`` dev rows held back (``n_train``: the train rows there are). With fewer,
        the run may end on the initial prompt having tried nothing; the dry run warns. Fixed
        prompts need none."""
        if self.fixed:
            return 0
        raise NotImplementedError(f"{self.name} does not state the task calls its first step needs")

    def budget_shortfall(self, max_task_calls: int | None, n_train: int, n_dev: int) -> str | None:
        """Why ``max_task_calls`` may buy the method nothing (below ``minimum_task_calls``); None if it suffices."""
        need = self.minimum_task_calls(n_train, n_dev)
        if max_task_calls is None or max_task_calls >= need:
            return None
        return (f"max_task_calls {max_task_calls} is below the {need} task calls that guarantee one step of its own "
                f"(its options, and the final choice on {n_dev} dev rows held back); the run may return the initial "
                "prompt having tried nothing")

    def deviations(self, run: Run) -> list[str]:
        return self.options.deviations()


def parse_options(options_class: type[OptimizerOptions], given: dict, owner: str) -> OptimizerOptions:
    try:
        return options_class(**given)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())
        known = ", ".join(sorted(options_class.model_fields))
        raise OptionError(f"{owner}: {problems} (known options: {known})") from None


# ---- the lazy registry -------------------------------------------------------------------------
_PACKAGE = Path(__file__).parent
_CLASSES: dict[str, type[Optimizer]] = {}


def register_optimizer(name: str):
    def register(cls: type[Optimizer]) -> type[Optimizer]:
        if name in _CLASSES and _CLASSES[name] is not cls:
            raise ValueError(f"Optimizer {name!r} is registered twice")
        cls.name = name
        _CLASSES[name] = cls
        return cls

    return register


def _registered_in(path: Path) -> list[tuple[str, str]]:
    """(name, class) of every ``@register_optimizer("name")`` class in one source file."""
    found = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register_optimizer"
                    and decorator.args and isinstance(decorator.args[0], ast.Constant)):
                found.append((decorator.args[0].value, node.name))
    return found


@functools.cache
def registry() -> dict[str, str]:
    """Optimizer name -> ``module:Class``, read once from the source files without importing them."""
    entries = {}
    for path in sorted(_PACKAGE.glob("*.py")):
        for name, class_name in _registered_in(path):
            if name in entries:
                raise ValueError(f"Optimizer {name!r} is registered twice ({entries[name]} and {path.stem})")
            entries[name] = f"optimizers.{path.stem}:{class_name}"
    return entries


def optimizer_names() -> list[str]:
    return sorted(registry())


def get_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class, importing only its own module."""
    entries = registry()
    if name not in entries:
        raise UnknownNameError("optimizer", name, entries)
    module, class_name = entries[name].split(":")
    return getattr(importlib.import_module(module), class_name)


def options_schema(name: str) -> dict:
    """The JSON schema of an optimizer's options (referenced from the config schema)."""
    return get_optimizer(name).Options.model_json_schema()


def describe_model(backend) -> dict:
    """Name, source and checksum of a local model, or the endpoint's address and model."""
    if hasattr(backend, "prepared"):
        return {"name": backend.spec.name, "hf_id": backend.spec.hf_id, "source": backend.prepared.source,
                "checksum": backend.prepared.checksum, "weights_sha256": backend.prepared.weights_sha256,
                "dtype": backend.dtype}
    return {"name": getattr(backend, "model", "?"), "checksum": backend.identity, "source": "endpoint"}


def validate_result(record: dict) -> PromptResult:
    """The record as a ``PromptResult``; a ``SuiteError`` naming the field when it breaks the contract."""
    try:
        return PromptResult.model_validate(record)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        raise SuiteError(f"not a valid prompt result: {problems}") from None


def write_result(path, result: PromptResult | dict) -> Path:
    result = validate_result(result) if isinstance(result, dict) else result
    return write_json_atomic(path, result.model_dump(mode="json"))
