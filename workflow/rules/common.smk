# Config validation, target lists and input functions. Validation runs before the DAG is
# built, so a bad config fails in a dry run with a message naming the key or the name.
import json
import shlex

from snakemake.utils import validate

import tasks as task_registry
from model_engine.registry import get_model_spec
from optimizers.base import get_optimizer
from suite_errors import SuiteError


validate(config, schema="../schemas/config.schema.yaml")


def _check_names():
    try:
        for name in config["tasks"]:
            task_registry.get_task(name)
        for name in config["models"] + config.get("transfer_targets", []):
            get_model_spec(name)
        for label in config.get("endpoint_targets", {}):
            if label in config["models"] + config.get("transfer_targets", []):
                raise SuiteError(f"endpoint_targets: label {label!r} is also a local model; pick another label")
        for name, options in config["optimizers"].items():
            get_optimizer(name)(**options)  # unknown optimizers and bad options fail here
    except SuiteError as error:
        raise WorkflowError(f"config: {error}")


_check_names()

TASKS = config["tasks"]
MODELS = config["models"]
ENDPOINT_TARGETS = config.get("endpoint_targets", {})
TARGETS = list(dict.fromkeys(MODELS + config.get("transfer_targets", []) + list(ENDPOINT_TARGETS)))
OPTIMIZERS = list(config["optimizers"])
# External methods (rules of their own) appear everywhere the optimizers do.
METHODS = OPTIMIZERS + (["manual"] if config.get("manual") else [])
RUNTIME = {"dtype": "float32", "device": "cpu", "threads": 2, "batch_size": 64, **config.get("runtime", {})}
EVALUATION = {"backend": "hf", "limit": None, "max_reasoning_tokens": 512, "batch_size": 16, **config.get("evaluation", {})}
BUDGET = {"max_task_calls": None, "max_optimizer_calls": None, **config.get("budget", {})}


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(TARGETS),
    target="|".join(TARGETS),
    optimizer="|".join(OPTIMIZERS),


def data_root_option():
    return f"--data-root {shlex.quote(config['data_root'])}" if config.get("data_root") else ""


def optimize_arguments(wildcards):
    """Everything `prompt-suite optimize` needs from the config, shell-quoted."""
    args = [
        "--options", shlex.quote(json.dumps(config["optimizers"][wildcards.optimizer])),
        "--seed", str(config.get("seed", 0)),
        "--cache-dir", shlex.quote(config["cache_dir"]),
        "--dtype", RUNTIME["dtype"], "--device", RUNTIME["device"],
        "--threads", str(RUNTIME["threads"]), "--batch-size", str(RUNTIME["batch_size"]),
    ]
    for key in ("max_task_calls", "max_optimizer_calls"):
        if BUDGET[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(BUDGET[key])]
    endpoint = config.get("optimizer_llm")
    if endpoint:
        args += ["--optimizer-endpoint", shlex.quote(endpoint["base_url"]),
                 "--optimizer-endpoint-model", shlex.quote(endpoint["model"])]
        if endpoint.get("api_key_env"):
            args += ["--optimizer-api-key-env", endpoint["api_key_env"]]
    return " ".join(args + [data_root_option()])


def target_model_record(wildcards):
    """A local target's prepared-model record; endpoint targets have none."""
    return [] if wildcards.target in ENDPOINT_TARGETS else f"results/models/{wildcards.target}.json"


def evaluate_arguments(wildcards):
    args = ["--cache-dir", shlex.quote(config["cache_dir"]), "--dtype", RUNTIME["dtype"], "--device", RUNTIME["device"],
            "--batch-size", str(EVALUATION["batch_size"]), "--max-reasoning-tokens", str(EVALUATION["max_reasoning_tokens"])]
    endpoint = ENDPOINT_TARGETS.get(wildcards.target)
    if endpoint is None:
        args += ["--backend", EVALUATION["backend"]]
    else:
        args += ["--backend", "endpoint", "--endpoint", shlex.quote(endpoint["base_url"]),
                 "--endpoint-model", shlex.quote(endpoint["model"]), "--endpoint-timeout", str(endpoint.get("timeout_s", 300))]
        for key in ("api_key_env", "eos_string"):
            if endpoint.get(key):
                args += [f"--endpoint-{key.replace('_', '-')}", shlex.quote(endpoint[key])]
    if EVALUATION["limit"]:
        args += ["--limit", str(EVALUATION["limit"])]
    return " ".join(args + [data_root_option()])


def get_prompt_files(wildcards):
    return expand("results/prompts/{task}/{source}/{method}.json", task=wildcards.task, source=MODELS, method=METHODS)


def get_eval_files():
    return expand("results/eval/{task}/{source}/{method}/{target}.json", task=TASKS, source=MODELS, method=METHODS,
                  target=TARGETS)


REPORT_TABLES = ["main", "per_task", "transfer", "budget"]
REPORT_PLOTS = ["accuracy_vs_task_calls", "transfer_heatmap", "per_task_bars"]


def get_final_output():
    return (
        expand("results/tables/{table}.{ext}", table=REPORT_TABLES, ext=["csv", "md", "tex"])
        + expand("results/plots/{plot}.png", plot=REPORT_PLOTS)
    )
