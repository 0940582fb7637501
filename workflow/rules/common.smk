# Config validation, target lists and input functions. Validation runs before the DAG is
# built (suite_config: the schema with every optimizer's generated options schema), so a
# bad config fails in a dry run with a message naming the JSON path, and without torch.
import json
import shlex

import suite_config
import suite_plan
from snakemake.logging import logger
from evaluation import report as report_tables
from suite_errors import SuiteError


try:
    suite_config.validate_config(config)
    # Budgets too small for one step of a method's own: said in every run and dry run.
    for shortfall in suite_plan.budget_shortfalls(config, allow_download=False):
        logger.warning(f"warning: {shortfall}")
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
SEEDS = config["seeds"]
LOCAL_MODELS = suite_config.local_models(config)  # every model a job loads


wildcard_constraints:
    task="|".join(TASKS),
    model="|".join(LOCAL_MODELS),
    target="|".join(TARGETS),
    optimizer="|".join(OPTIMIZERS),
    seed=r"\d+",


def data_root_option():
    return f"--data-root {shlex.quote(config['data_root'])}" if config["data_root"] else ""


def optimize_inputs(wildcards):
    """The split, the task model and, for text methods with a local optimizer LLM, that model."""
    inputs = {"split": f"results/splits/{wildcards.task}.json", "model": f"results/models/{wildcards.model}.json"}
    writer = suite_config.optimize_job(config, wildcards.task, wildcards.model, wildcards.optimizer)["optimizer_model"]
    if writer:
        inputs["optimizer_model"] = f"results/models/{writer}.json"
    return inputs


def optimize_job(wildcards):
    """The job's slice of the validated config, as one JSON argument (suite_config.optimize_job)."""
    return shlex.quote(json.dumps(suite_config.optimize_job(config, wildcards.task, wildcards.model, wildcards.optimizer)))


def optimizer_model_record(wildcards):
    """A local optimizer LLM's prepared-model record, when this job loads one."""
    inputs = optimize_inputs(wildcards)
    return f"--optimizer-model-record {inputs['optimizer_model']}" if "optimizer_model" in inputs else ""


def target_model_record(wildcards):
    """A local target's prepared-model record; endpoint targets have none."""
    return [] if wildcards.target in ENDPOINT_TARGETS else f"results/models/{wildcards.target}.json"


def evaluate_job(wildcards):
    """The job's slice of the validated config, as one JSON argument (suite_config.evaluate_job)."""
    return shlex.quote(json.dumps(suite_config.evaluate_job(config, wildcards.task, wildcards.target)))


def target_record_option(wildcards):
    record = target_model_record(wildcards)
    return f"--model-record {record}" if record else ""


def prepare_arguments(wildcards):
    """A model the config adds (hub_models) is described to the prepare job; registered ones are known."""
    args = ["--cache-dir", shlex.quote(config["cache_dir"])]
    if wildcards.model in config["hub_models"]:
        args += ["--spec", shlex.quote(json.dumps(config["hub_models"][wildcards.model]))]
    return " ".join(args)


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
