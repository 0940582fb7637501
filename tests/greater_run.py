"""Runs GReaTer on a tiny random model, for the kill-and-resume test (a subprocess).

    python -m tests.greater_run CHECKPOINT CACHE OUTPUT
"""

import json
import random
import sys

import tasks
from model_engine import GenerationCache
from optimizers.base import Budget, Checkpoint, get_optimizer
from tests.conftest import tiny_local_model

OPTIONS = dict(n_train=4, steps=6, max_reasoning_tokens=6, final_candidates=2, n_dev=2, topk=5, grad_batch_size=2)


def main(checkpoint: str, cache: str, output: str) -> None:
    model = tiny_local_model(cache=GenerationCache(cache))
    result = get_optimizer("greater")(**OPTIONS).optimize(
        tasks.load_task_data("navigate"), model, Budget(None), random.Random(11), Checkpoint(checkpoint), seed=11
    )
    with open(output, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
