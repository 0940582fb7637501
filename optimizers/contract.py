"""The typed run contract every optimizer and external method shares.

- ``Terms``: the equal terms set once in the config and applied to every method (the
  starting prompt, the reasoning limit, the dev rows of the final choice).
- ``OptimizerOptions``: the base of each optimizer's validated options.
- ``RunContext``: what one run is given (task data, task model, optimizer LLM, budget,
  checkpoint, seed, terms).
- ``TrajectoryStep``, ``Selection``, ``Stopped``, ``PromptResult``: what a run returns,
  written to ``results/prompts/{task}/{model}/{method}.json``.

The result's JSON schema (``prompt_result.schema.json``, for external methods written in
other languages) is generated from these types: ``prompt-suite schema --write``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RESULT_SCHEMA = Path(__file__).with_name("prompt_result.schema.json")

#: the split a score was measured on: train rows, all dev rows, a dev screening slice,
#: or a random train minibatch
ScoreSplit = Literal["train", "dev", "screen", "minibatch"]
#: why a run ended: its schedule finished, a cap was reached, nothing was left to try, or
#: the method does not optimize at all
StopReason = Literal["schedule", "task_calls", "optimizer_calls", "exhausted", "fixed"]

DEFAULT_INITIAL_PROMPT = "Let's think step by step."
#: ``tasks.extractors.VARIANTS`` (a test keeps them equal)
ExtractorVariant = Literal["dollar", "gemma2", "plain"]


class Terms(BaseModel):
    """The equal terms: set once in the config (``terms:``) and applied to every method."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_prompt: str = Field(
        DEFAULT_INITIAL_PROMPT, min_length=1,
        description="every method starts from this prompt and keeps it as a final candidate")
    max_reasoning_tokens: int = Field(
        512, ge=1, description="reasoning limit of the task model, in optimization and test evaluation alike")
    n_dev: int | None = Field(
        None, ge=1, description="dev rows of every method's final choice (the first n; null: all dev rows)")
    extractor: ExtractorVariant = Field(
        "dollar", description="extractor variant after the reasoning (tasks.extractors): dollar, gemma2 or plain")
    extractor_by_model: dict[str, ExtractorVariant] = Field(
        default_factory=dict, description="model name -> extractor variant, for models that need another one")
    max_prompt_chars: int = Field(
        2000, ge=1, description="longest prompt any method may use, in characters: longer optimizer outputs are "
                                "never run (they score 0 and cannot be chosen); longer initial or manual prompts "
                                "are refused")

    @model_validator(mode="after")
    def _initial_prompt_fits(self) -> Terms:
        if len(self.initial_prompt) > self.max_prompt_chars:
            raise ValueError(f"initial_prompt has {len(self.initial_prompt)} characters, more than max_prompt_chars "
                             f"({self.max_prompt_chars})")
        return self

    def extractor_for(self, model: str) -> str:
        """The extractor variant the harness uses with ``model`` (for every method alike)."""
        return self.extractor_by_model.get(model, self.extractor)


class OptimizerOptions(BaseModel):
    """Base of every optimizer's options: unknown keys and out-of-range values are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def deviations(self) -> list[str]:
        """What these options change on purpose, against the shared terms or the reference method."""
        return []


@dataclass
class RunContext:
    """Everything one optimizer run is given. Only train and dev rows are in ``data``."""

    data: Any  # tasks.TaskData
    task_model: Any  # a model_engine.protocol.Engine (the local task model)
    budget: Any  # optimizers.base.Budget
    terms: Terms = field(default_factory=Terms)
    seed: int = 0
    checkpoint: Any = None  # optimizers.base.Checkpoint; None: no checkpoint
    #: writes prompts for text-feedback methods; None: the task model itself (self-optimization)
    optimizer_model: Any = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class TrajectoryStep(BaseModel):
    """The method's best prompt after one step, with its score and the split it was measured on."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0)
    prompt: str
    score: float | None = Field(None, ge=0, le=1, description="accuracy (0-1) on `split`; null: not scored")
    split: ScoreSplit | None = None
    task_calls: int = Field(ge=0, description="task calls spent so far")
    optimizer_calls: int = Field(ge=0, description="optimizer-LLM completions so far")
    details: dict[str, Any] = Field(default_factory=dict, description="method-specific details")


class SelectionCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    dev_accuracy: float | None = None
    dev_parse_rate: float | None = None


class Selection(BaseModel):
    """How the final prompt was chosen: the best dev accuracy among the method's ranked candidates."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["dev"] = "dev"
    n: int = Field(ge=0, description="dev rows each candidate was scored on")
    rule: str = Field(description="how the choice was made")
    candidates: list[SelectionCandidate]


class Stopped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: StopReason
    detail: str = ""
    task_calls: int = Field(ge=0)
    optimizer_calls: int = Field(ge=0)


class BudgetRecord(BaseModel):
    """What the run spent. Task calls are the shared unit; the rest is reported beside it."""

    model_config = ConfigDict(extra="allow")

    task_calls: int = Field(ge=0)
    max_task_calls: int | None = None
    optimizer_calls: int = Field(ge=0)
    max_optimizer_calls: int | None = None
    forward_passes: int = Field(0, ge=0)
    backward_passes: int = Field(0, ge=0)
    forward_tokens: int = Field(0, ge=0)
    backward_tokens: int = Field(0, ge=0)
    task_model: dict[str, Any] = Field(default_factory=dict)
    optimizer_model: dict[str, Any] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict)


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    checksum: str


class Provenance(BaseModel):
    model_config = ConfigDict(extra="allow")

    seed: int
    model: ModelRecord
    environment: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    terms: dict[str, Any] = Field(default_factory=dict)
    extractor: dict[str, Any] = Field(
        default_factory=dict, description="the extractor the harness used with the task model: variant, text, answer_lead")
    config: dict[str, Any] = Field(default_factory=dict)


#: a name that is safe as one path component (no separators, no leading dot)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class PromptResult(BaseModel):
    """``results/prompts/{task}/{model}/{method}/seed{seed}.json``: the contract between methods and evaluation."""

    model_config = ConfigDict(extra="forbid",
                              title="Optimized prompt: results/prompts/{task}/{model}/{method}/seed{seed}.json")

    # These three become path components of the evaluation files: one plain name each, never a path.
    optimizer: str = Field(pattern=NAME_PATTERN, description="registered optimizer or external method")
    task: str = Field(pattern=NAME_PATTERN)
    model: str = Field(pattern=NAME_PATTERN, description="the task model the prompt was optimized on")
    prompt: str = Field(description="the chosen text for the prompt slot (after the question)")
    initial_prompt: str
    optimizer_llm: ModelRecord | None = Field(None, description="the model that wrote candidate prompts, if any")
    selection: Selection | None = Field(None, description="the final choice on dev; null for fixed prompts")
    trajectory: list[TrajectoryStep] = Field(min_length=1)
    stopped: Stopped
    deviations: list[str] = Field(default_factory=list, description="on-purpose deviations from the shared terms")
    budget: BudgetRecord
    provenance: Provenance


def result_schema() -> dict:
    return PromptResult.model_json_schema()


def write_result_schema(path: Path = RESULT_SCHEMA) -> Path:
    path.write_text(json.dumps(result_schema(), indent=1) + "\n")
    return path
