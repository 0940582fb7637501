"""Runs one registered optimizer on a tiny random model, for the kill-and-resume tests (a subprocess).

    python -m tests.optimizer_run NAME CHECKPOINT CACHE OUTPUT
"""

import json
import logging
import sys

from model_engine import GenerationCache
from optimizers.base import Checkpoint, get_optimizer
from tests.conftest import optimize, tiny_local_model
from tests.scripted import ScriptedLLM


def main(name: str, checkpoint: str, cache: str, output: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = optimize(name, get_optimizer(name).test_options, model=tiny_local_model(cache=GenerationCache(cache)),
                      optimizer_model=ScriptedLLM(stateless=True), seed=11, checkpoint=Checkpoint(checkpoint))
    with open(output, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:5])
