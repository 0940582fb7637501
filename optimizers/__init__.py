"""Prompt optimizers: one file each, found through the registry in ``optimizers.base``.

``get_optimizer(name)(**options).optimize(RunContext(...))`` returns the ``PromptResult``
written to ``results/prompts/{task}/{model}/{optimizer}.json`` (``optimizers.contract``).
"""

from optimizers.base import Budget, BudgetExhausted, Checkpoint, Optimizer, OptionError, get_optimizer, optimizer_names
from optimizers.contract import PromptResult, RunContext, Terms

__all__ = ["Budget", "BudgetExhausted", "Checkpoint", "Optimizer", "OptionError", "PromptResult", "RunContext", "Terms",
           "get_optimizer", "optimizer_names"]
