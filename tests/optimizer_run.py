"""Runs one registered optimizer on a tiny random model, for the kill-and-resume tests (a subprocess).

    python -m tests.optimizer_run NAME CHECKPOINT CACHE OUTPUT
"""

import json
import random
import sys

import tasks
from model_engine import GenerationCache
from optimizers.base import Budget, Checkpoint, get_optimizer
from tests.conftest import tiny_local_model
from tests.scripted import ScriptedLLM
from tests.test_optimizer_contract import SMALL_OPTIONS


def main(name: str, checkpoint: str, cache: str, output: str) -> None:
    model = tiny_local_model(cache=GenerationCache(cache))
    result = get_optimizer(name)(**SMALL_OPTIONS[name]).optimize(
        tasks.load_task_data("navigate"), model, Budget(None), random.Random(11), Checkpoint(checkpoint), seed=11,
        optimizer_model=ScriptedLLM(stateless=True),
    )
    with open(output, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:5])
