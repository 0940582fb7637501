# Config validation and target lists. Validation runs before the DAG is built, so a
# bad config fails in a dry run with a message naming the key or the unknown name.
from snakemake.utils import validate

import tasks as task_registry
from model_engine.registry import get_model_spec
from suite_errors import SuiteError


validate(config, schema="../schemas/config.schema.yaml")


def _check_names():
    try:
        for name in config["tasks"]:
            task_registry.get_task(name)
        for name in config["models"]:
            get_model_spec(name)
    except SuiteError as error:
        raise WorkflowError(f"config: {error}")


_check_names()

TASKS = config["tasks"]
MODELS = config["models"]


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(MODELS),


def data_root_option():
    return f"--data-root {config['data_root']}" if config.get("data_root") else ""


def get_final_output():
    return expand("results/splits/{task}.json", task=TASKS) + expand(
        "results/models/{model}.json", model=MODELS
    )
