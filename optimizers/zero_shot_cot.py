"""Zero-shot chain of thought: the fixed "Let's think step by step." in the prompt slot.

The baseline every optimizer must beat. It optimizes nothing and spends no budget.
"""

from __future__ import annotations

from pydantic import Field

from optimizers.base import Optimizer, register_optimizer
from optimizers.contract import DEFAULT_INITIAL_PROMPT, OptimizerOptions


class ZeroShotCoTOptions(OptimizerOptions):
    prompt: str = Field(DEFAULT_INITIAL_PROMPT, min_length=1, description="the fixed prompt (Kojima et al. 2022)")


@register_optimizer("zero_shot_cot")
class ZeroShotCoT(Optimizer):
    Options = ZeroShotCoTOptions
    fixed = True

    def final_candidates(self, run, state) -> list[str]:
        return [self.options.prompt]

    def deviations(self, run) -> list[str]:
        if self.options.prompt != run.initial_prompt:
            return [f"a fixed prompt {self.options.prompt!r}, not the shared initial prompt {run.initial_prompt!r}"]
        return []
