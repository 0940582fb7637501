"""The optimizer protocol, the shared budget, checkpoints and the result contract.

Every optimizer is one file in this package: a subclass of ``Optimizer`` decorated with
``@register_optimizer("name")``, with an ``Options`` dataclass of its settings. It
receives train and dev rows only (``tasks.TaskData``), a model, a ``Budget`` and a
seeded ``random.Random``, and returns the JSON record of ``results/prompts/...``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from model_engine.provenance import environment, write_json_atomic
from model_engine.usage import Usage
from suite_errors import SuiteError, UnknownNameError

RESULT_SCHEMA = Path(__file__).with_name("prompt_result.schema.json")


class OptionError(SuiteError, ValueError):
    """An optimizer option that is unknown or out of range."""


class BudgetExhausted(SuiteError):
    """Raised when work would spend more task calls than the budget allows."""


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
        if max_task_calls is not None and max_task_calls < 0:
            raise OptionError(f"max_task_calls must be >= 0, got {max_task_calls}")
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
            raise BudgetExhausted(
                f"{len(new)} more task calls would exceed the budget of {self.max_task_calls} "
                f"({self.task_calls} spent)"
            )
        self._charged.update(self._pair(key, i) for i in new)
        self.task_calls += len(new)
        return len(new)

    def charge_optimizer_calls(self, count: int) -> None:
        if self.max_optimizer_calls is not None and self.optimizer_calls + count > self.max_optimizer_calls:
            raise BudgetExhausted(f"optimizer calls would exceed the budget of {self.max_optimizer_calls}")
        self.optimizer_calls += count

    def record(self) -> dict:
        return {
            "task_calls": self.task_calls,
            "max_task_calls": self.max_task_calls,
            "optimizer_calls": self.optimizer_calls,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "forward_tokens": self.forward_tokens,
            "backward_tokens": self.backward_tokens,
            "task_model": self.task_usage.to_dict(),
            "optimizer_model": self.optimizer_usage.to_dict(),
        }

    def state(self) -> dict:
        return {**self.record(), "max_optimizer_calls": self.max_optimizer_calls, "charged": sorted(self._charged)}

    @classmethod
    def from_state(cls, state: dict) -> Budget:
        budget = cls(state["max_task_calls"], state.get("max_optimizer_calls"))
        budget.task_calls, budget.optimizer_calls = state["task_calls"], state["optimizer_calls"]
        budget.forward_passes, budget.backward_passes = state["forward_passes"], state["backward_passes"]
        budget.forward_tokens, budget.backward_tokens = state["forward_tokens"], state["backward_tokens"]
        budget.task_usage, budget.optimizer_usage = Usage(**state["task_model"]), Usage(**state["optimizer_model"])
        budget._charged = set(state["charged"])
        return budget


class Checkpoint:
    """One JSON file of a run's state, replaced atomically after every step."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        return json.loads(self.path.read_text())

    def save(self, state: dict) -> None:
        if self.path is not None:
            write_json_atomic(self.path, state)


CHECKPOINT_VERSION = 1


def save_progress(checkpoint: Checkpoint, options, rng: random.Random, budget: Budget, state: dict) -> None:
    """Persist a step loop: its state, the random stream and the budget (with charged pairs)."""
    checkpoint.save({"version": CHECKPOINT_VERSION, "options": dataclasses.asdict(options), "state": state,
                     "rng": rng_state(rng), "budget": budget.state()})


def resume_progress(checkpoint: Checkpoint, options, rng: random.Random, budget: Budget, owner: str) -> dict | None:
    """The saved state, with ``rng`` and ``budget`` restored in place; None to start afresh."""
    saved = checkpoint.load()
    if saved is None:
        return None
    if saved.get("version") != CHECKPOINT_VERSION or saved.get("options") != dataclasses.asdict(options):
        raise OptionError(
            f"Checkpoint {checkpoint.path} was written with other options or by another version; "
            "delete it to start afresh."
        )
    set_rng_state(rng, saved["rng"])
    budget.__dict__.update(Budget.from_state(saved["budget"]).__dict__)
    print(f"[{owner}] resuming from step {saved['state']['step']} ({checkpoint.path})", flush=True)
    return saved["state"]


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class Optimizer(ABC):
    """A prompt optimizer. Subclasses define ``name``, ``Options`` and ``optimize``."""

    name: ClassVar[str]
    #: a dataclass whose fields are the optimizer's options, with defaults
    Options: ClassVar[type]

    def __init__(self, **options: Any):
        self.options = parse_options(self.Options, options, self.name)

    @abstractmethod
    def optimize(self, data, model, budget: Budget, rng: random.Random, checkpoint: Checkpoint, seed: int = 0,
                 optimizer_model=None) -> dict:
        """Run the optimization; return the result record (see ``prompt_result.schema.json``).

        ``model`` is the task model; ``optimizer_model`` writes prompts in text-feedback
        methods (default: the task model itself, the paper's self-optimization setting).
        """


def require_positive(options, *names: str) -> None:
    """Raise ValueError naming the first option that is not a positive integer."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def parse_options(options_class: type, given: dict, owner: str):
    known = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise OptionError(f"Unknown option(s) {', '.join(unknown)} for {owner}; known options: {', '.join(sorted(known))}")
    try:
        return options_class(**given)
    except (TypeError, ValueError) as error:
        raise OptionError(f"{owner}: {error}") from None


_REGISTRY: dict[str, type[Optimizer]] = {}


def register_optimizer(name: str):
    def register(cls: type[Optimizer]) -> type[Optimizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"Optimizer {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def registry() -> dict[str, type[Optimizer]]:
    import importlib
    import pkgutil

    import optimizers

    for module in pkgutil.iter_modules(optimizers.__path__):
        importlib.import_module(f"optimizers.{module.name}")
    return _REGISTRY


def optimizer_names() -> list[str]:
    return sorted(registry())


def get_optimizer(name: str) -> type[Optimizer]:
    try:
        return registry()[name]
    except KeyError:
        raise UnknownNameError("optimizer", name, registry()) from None


def describe_model(backend) -> dict:
    """Name, source and checksum of a local model, or the endpoint's address and model."""
    if hasattr(backend, "prepared"):
        return {"name": backend.spec.name, "hf_id": backend.spec.hf_id, "source": backend.prepared.source,
                "checksum": backend.prepared.checksum, "dtype": backend.dtype}
    return {"name": getattr(backend, "model", "?"), "checksum": backend.identity, "source": "endpoint"}


def provenance(model, data, options, seed: int, optimizer_model=None) -> dict:
    return {
        "options": dataclasses.asdict(options),
        "seed": seed,
        "config": {},
        "model": describe_model(model),
        "optimizer_model": describe_model(optimizer_model if optimizer_model is not None else model),
        "data_sha256": data.data_sha256,
        "split_sizes": {"train": len(data.train), "dev": len(data.dev)},
        "environment": environment(),
    }


def validate_result(record: dict) -> None:
    import jsonschema

    jsonschema.validate(record, json.loads(RESULT_SCHEMA.read_text()))


def write_result(path, record: dict) -> Path:
    validate_result(record)
    return write_json_atomic(path, record)
