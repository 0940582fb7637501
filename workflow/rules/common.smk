# Config validation, target lists and input functions. Validation runs before the DAG is
# built (suite_config: the schema with every optimizer's generated options schema), so a
# bad config fails in a dry run with a message naming the JSON path, and without torch.
import json
import shlex

import suite_config
from evaluation import report as report_tables
from optimizers.base import get_optimizer
from suite_errors import SuiteError


try:
    suite_config.validate_config(config)
except SuiteError as error:
    raise WorkflowError(f"config: {error}")

TASKS = config["tasks"]
MODELS = config["models"]
ENDPOINT_TARGETS = config.get("endpoint_targets", {})
TARGETS = suite_config.target_models(config)
OPTIMIZERS = list(config["optimizers"])
# External methods (rules of their own, declared in the config) appear everywhere the optimizers do.
EXTERNAL_METHODS = config["external_methods"]
METHODS = OPTIMIZERS + list(EXTERNAL_METHODS)
RUNTIME = config["runtime"]  # validation filled every default from the schema
EVALUATION = config["evaluation"]
TERMS = config["terms"]
SEEDS = config["seeds"]
OPTIMIZER_LLM = config.get("optimizer_llm")
WRITER = suite_config.local_optimizer_model(config)  # a local model writing the text methods' prompts
LOCAL_MODELS = suite_config.local_models(config)  # every model a job loads


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(LOCAL_MODELS),
    target="|".join(TARGETS),
    optimizer="|".join(OPTIMIZERS),
    seed=r"\d+",


def data_root_option():
    return f"--data-root {shlex.quote(config['data_root'])}" if config.get("data_root") else ""


def optimize_inputs(wildcards):
    """The split, the task model and, for text methods with a local optimizer LLM, that model."""
    inputs = {"split": f"results/splits/{wildcards.task}.json", "model": f"results/models/{wildcards.model}.json"}
    if get_optimizer(wildcards.optimizer).uses_optimizer_llm and WRITER not in (None, wildcards.model):
        inputs["optimizer_model"] = f"results/models/{WRITER}.json"
    return inputs


def optimize_arguments(wildcards):
    """Everything `prompt-suite optimize` needs from the config, shell-quoted."""
    args = [
        "--options", shlex.quote(json.dumps(config["optimizers"][wildcards.optimizer])),
        "--terms", shlex.quote(json.dumps(TERMS)),
        "--seed", wildcards.seed,
        "--cache-dir", shlex.quote(config["cache_dir"]),
        "--dtype", RUNTIME["dtype"], "--device", RUNTIME["device"],
        "--batch-size", str(RUNTIME["batch_size"]),
    ]
    for key, value in suite_config.budget_for(config, wildcards.task).items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    args += ["--model-record", f"results/models/{wildcards.model}.json"]
    if not get_optimizer(wildcards.optimizer).uses_optimizer_llm:
        pass  # GReaTer and fixed prompts never load or call an optimizer LLM
    elif OPTIMIZER_LLM and "base_url" in OPTIMIZER_LLM:
        args += ["--optimizer-endpoint", shlex.quote(OPTIMIZER_LLM["base_url"]),
                 "--optimizer-endpoint-model", shlex.quote(OPTIMIZER_LLM["model"]),
                 "--optimizer-endpoint-timeout", str(OPTIMIZER_LLM["timeout_s"])]
        if OPTIMIZER_LLM.get("api_key_env"):
            args += ["--optimizer-api-key-env", OPTIMIZER_LLM["api_key_env"]]
    elif WRITER:
        args += ["--optimizer-model", WRITER]
        if WRITER != wildcards.model:
            args += ["--optimizer-model-record", f"results/models/{WRITER}.json"]
    return " ".join(args + [data_root_option()])


def prepare_arguments(wildcards):
    """A model the config adds (hub_models) is described to the prepare job; registered ones are known."""
    args = ["--cache-dir", shlex.quote(config["cache_dir"])]
    if wildcards.model in config["hub_models"]:
        args += ["--spec", shlex.quote(json.dumps(config["hub_models"][wildcards.model]))]
    return " ".join(args)


def target_model_record(wildcards):
    """A local target's prepared-model record; endpoint targets have none."""
    return [] if wildcards.target in ENDPOINT_TARGETS else f"results/models/{wildcards.target}.json"


def evaluate_arguments(wildcards):
    args = ["--cache-dir", shlex.quote(config["cache_dir"]), "--dtype", RUNTIME["dtype"], "--device", RUNTIME["device"],
            "--batch-size", str(EVALUATION["batch_size"]), "--max-reasoning-tokens", str(TERMS["max_reasoning_tokens"]),
            "--extractor", TERMS["extractor_by_model"].get(wildcards.target, TERMS["extractor"])]
    endpoint = ENDPOINT_TARGETS.get(wildcards.target)
    if endpoint is None:
        args += ["--backend", EVALUATION["backend"], "--model-record", f"results/models/{wildcards.target}.json"]
        if EVALUATION["backend"] == "vllm":
            args += ["--vllm-options", shlex.quote(json.dumps(EVALUATION["vllm"]))]
    else:
        args += ["--backend", "endpoint", "--endpoint", shlex.quote(endpoint["base_url"]),
                 "--endpoint-model", shlex.quote(endpoint["model"]), "--endpoint-timeout", str(endpoint.get("timeout_s", 300))]
        for key in ("api_key_env", "eos_string"):
            if endpoint.get(key):
                args += [f"--endpoint-{key.replace('_', '-')}", shlex.quote(endpoint[key])]
    if EVALUATION["limit"]:
        args += ["--limit", str(EVALUATION["limit"])]
    return " ".join(args + [data_root_option()])


# One prompt file per task x task model x method x seed; its evaluation on every target beside it.
PROMPT_FILE = "results/prompts/{task}/{source}/{method}/seed{seed}.json"
EVAL_FILE = "results/eval/{task}/{source}/{method}/seed{seed}/{target}.json"


def get_prompt_files(wildcards):
    return expand(PROMPT_FILE, task=wildcards.task, source=MODELS, method=METHODS, seed=SEEDS)


def get_eval_files():
    return expand(EVAL_FILE, task=TASKS, source=MODELS, method=METHODS, seed=SEEDS, target=TARGETS)


REPORT_TABLES, REPORT_PLOTS = list(report_tables.TABLES), list(report_tables.PLOTS)


def get_final_output():
    return (
        expand("results/tables/{table}.{ext}", table=REPORT_TABLES, ext=["csv", "md", "tex", "html"])
        + expand("results/plots/{plot}.png", plot=REPORT_PLOTS)
        + expand("results/pages/samples_{task}.html", task=TASKS)
    )
