"""Prompt optimizers: one file each, found through the registry in ``optimizers.base``.

``get_optimizer(name)(**options).optimize(data, model, budget, rng, checkpoint)`` returns
the record written to ``results/prompts/{task}/{model}/{optimizer}.json``.
"""

from optimizers.base import Budget, BudgetExhausted, Checkpoint, Optimizer, OptionError, get_optimizer, optimizer_names

__all__ = ["Budget", "BudgetExhausted", "Checkpoint", "Optimizer", "OptionError", "get_optimizer", "optimizer_names"]
