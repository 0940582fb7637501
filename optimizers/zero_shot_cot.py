"""Zero-shot chain of thought: the fixed "Let's think step by step." in the prompt slot.

The baseline every optimizer must beat. It optimizes nothing and spends no budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizers.base import Optimizer, provenance, register_optimizer

PROMPT = "Let's think step by step."


@dataclass(frozen=True)
class ZeroShotCoTOptions:
    prompt: str = PROMPT


@register_optimizer("zero_shot_cot")
class ZeroShotCoT(Optimizer):
    Options = ZeroShotCoTOptions

    def optimize(self, data, model, budget, rng, checkpoint, seed: int = 0, optimizer_model=None) -> dict:
        print(f"[zero_shot_cot] prompt {self.options.prompt!r} (no optimization, no budget spent)", flush=True)
        return {
            "optimizer": self.name,
            "task": data.task.name,
            "model": model.spec.name,
            "prompt": self.options.prompt,
            "initial_prompt": self.options.prompt,
            "trajectory": [{"step": 0, "prompt": self.options.prompt, "task_calls": 0}],
            "stopped": "fixed",
            "budget": budget.record(),
            "provenance": provenance(model, data, self.options, seed),
        }
