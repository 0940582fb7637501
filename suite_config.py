"""The run configuration: its JSON schema and its validation, before any model loads.

The schema is ``workflow/schemas/config.schema.yaml`` with generated parts filled in:
the shared terms (``optimizers.contract.Terms``), every registered optimizer's options
(its pydantic model) and the task families that budgets may name. Validation fills the
schema's defaults and reports the first problem with its JSON path, e.g.
``optimizers.greater.n_train: -1 is less than the minimum of 1``. Nothing here imports
torch: the optimizer registry reads source files and imports only option models.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from suite_errors import SuiteError

SCHEMA_FILE = Path(__file__).parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(SuiteError):
    """A configuration value that breaks the schema, named by its JSON path."""


def config_schema() -> dict:
    import tasks
    from optimizers.base import optimizer_names, options_schema
    from optimizers.contract import Terms

    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    properties = schema["properties"]
    properties["terms"] = {**Terms.model_json_schema(), "default": {}}
    properties["optimizers"]["properties"] = {name: options_schema(name) for name in optimizer_names()}
    properties["optimizers"]["additionalProperties"] = False
    families = sorted({tasks.get_task(name).family for name in tasks.task_names()})
    properties["budget"]["properties"]["families"]["propertyNames"] = {"enum": families}
    properties["budget"]["properties"]["tasks"]["propertyNames"] = {"enum": tasks.task_names()}
    return schema


def _validator(schema: dict):
    """A Draft 2020-12 validator that also fills in each object's defaults."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = subschema["default"]
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def _path(error) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_config(config: dict) -> dict:
    """Check ``config`` in place (names first, then the schema) and fill its defaults."""
    import tasks
    from model_engine.registry import get_model_spec
    from optimizers.base import get_optimizer, optimizer_names

    def names(key) -> list:  # names are checked first (with suggestions) where the key has the right type
        value = config.get(key)
        return list(value) if isinstance(value, (list, dict)) else []

    _register_hub_models(config)
    if "seed" in config:
        raise ConfigError(f"seed: replaced by seeds, a list of replicate seeds (e.g. seeds: [{config['seed']}])")
    for name in names("tasks"):
        tasks.get_task(name)
    for name in names("models") + names("transfer_targets"):
        get_model_spec(name)
    for name in names("optimizers"):
        get_optimizer(name)
    if config.get("use_test_options") and isinstance(config.get("optimizers"), dict):
        # each optimizer's own small options, under the given ones
        config["optimizers"] = {name: {**get_optimizer(name).test_options, **(options or {})}
                                for name, options in config["optimizers"].items()}
    errors = sorted(_validator(config_schema()).iter_errors(config), key=lambda e: (len(e.absolute_path), _path(e)))
    if errors:
        error = errors[0]
        message = error.message if error.validator != "required" else error.message.replace("'", "")
        if len(message) > 300:  # a oneOf over whole sub-schemas: point at the key, not the schema
            message = f"{str(error.instance)[:80]!r} does not match any allowed form ({error.schema.get('description', '')})"
        raise ConfigError(f"{_path(error)}: {message}")
    from optimizers.contract import Terms

    config["terms"] = Terms(**config.get("terms", {})).model_dump(mode="json")  # every default, from one place
    if local_optimizer_model(config):
        get_model_spec(local_optimizer_model(config))
    local = set(config["models"]) | set(config.get("transfer_targets", []))
    for label in config.get("endpoint_targets", {}):
        if label in local:
            raise ConfigError(f"endpoint_targets.{label}: the label is also a local model; pick another label")
    for name in config.get("external_methods", {}):
        if name in optimizer_names():
            raise ConfigError(f"external_methods.{name}: the name is a registered optimizer; pick another name")
    return config


def _register_hub_models(config: dict) -> None:
    """Add the config's own hub models to the registry, so names are checked against them too."""
    from model_engine.registry import get_model_spec, model_names, register_model, spec_from_config

    entries = config.get("hub_models")
    if not isinstance(entries, dict):
        return  # the schema names the problem
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hf_id"), str):
            continue  # the schema names the problem
        spec = spec_from_config(name, entry)
        if name in model_names() and get_model_spec(name) != spec:
            raise ConfigError(f"hub_models.{name}: the name is a registered model; pick another name")
        register_model(spec)


def budget_for(config: dict, task: str) -> dict:
    """The caps of one task's runs: the task's own, else its family's, else the global ones."""
    import tasks

    budget = config.get("budget", {})
    caps = {key: budget.get(key) for key in ("max_task_calls", "max_optimizer_calls")}
    caps.update(budget.get("families", {}).get(tasks.get_task(task).family, {}))
    caps.update(budget.get("tasks", {}).get(task, {}))
    return caps


def optimize_job(config: dict, task: str, model: str, optimizer: str) -> dict:
    """Everything one optimize job takes from the validated config (defaults filled by the schema).

    The workflow hands a job this slice as one JSON argument and the human CLI builds it from
    a config file: one path from config to code, with the defaults in the schema alone.
    """
    from optimizers.base import get_optimizer

    uses_writer = get_optimizer(optimizer).uses_optimizer_llm
    llm, writer = config["optimizer_llm"], local_optimizer_model(config)
    return {
        "options": config["optimizers"][optimizer],
        "terms": config["terms"],
        "budget": budget_for(config, task),
        "runtime": {key: config["runtime"][key] for key in ("dtype", "device", "batch_size")},
        # GReaTer and fixed prompts never load or call an optimizer LLM; the task model writes its own
        "optimizer_endpoint": llm if uses_writer and llm and "base_url" in llm else None,
        "optimizer_model": writer if uses_writer and writer not in (None, model) else None,
        "cache_dir": config["cache_dir"],
        "data_root": config["data_root"],
    }


def evaluate_job(config: dict, task: str, target: str) -> dict:
    """Everything one evaluate job (task x target) takes from the validated config."""
    terms = config["terms"]
    return {
        "evaluation": config["evaluation"],
        "runtime": {key: config["runtime"][key] for key in ("dtype", "device")},
        "max_reasoning_tokens": terms["max_reasoning_tokens"],
        "max_prompt_chars": terms["max_prompt_chars"],
        "extractor": terms["extractor_by_model"].get(target, terms["extractor"]),
        "endpoint": config["endpoint_targets"].get(target),  # None: a local model
        "cache_dir": config["cache_dir"],
        "data_root": config["data_root"],
    }


def read_configfile(path: str | Path) -> dict:
    """A config file as a dict, not yet validated; YAML errors keep yaml's line and column."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return config


def job_from_configfile(path: str, task: str, models: list[str], optimizer: str | None = None) -> dict:
    """A minimal validated config for one job of the human CLI: the file's settings (or none), with
    this job's task, models and optimizer made part of it so that names are checked too."""
    config = read_configfile(path) if path else {}
    config["tasks"] = [task]
    given = [name for key in ("models", "transfer_targets", "endpoint_targets")
             if isinstance(config.get(key), (list, dict)) for name in config[key]]
    listed = config.get("models") if isinstance(config.get("models"), list) else []
    config["models"] = listed + [name for name in models if name not in given]
    if optimizer is not None:
        config["optimizers"] = {optimizer: (config.get("optimizers") or {}).get(optimizer, {})}
    elif not config.get("optimizers"):
        config["optimizers"] = {"zero_shot_cot": {}}  # an evaluate job uses none; the schema asks for one
    return validate_config(config)


def local_optimizer_model(config: dict) -> str | None:
    """The registry model loaded locally to write the text methods' prompts; None for the task
    model itself (self-optimization) or an endpoint."""
    llm = config.get("optimizer_llm")
    return llm["model"] if llm and "base_url" not in llm else None


def target_models(config: dict) -> list[str]:
    """Every model a prompt is evaluated on: the task models, the transfer targets, the endpoint targets."""
    return list(dict.fromkeys(config["models"] + config.get("transfer_targets", [])
                              + list(config.get("endpoint_targets", {}))))


def local_models(config: dict) -> list[str]:
    """Every model a job loads (one prepare_model job each): the task models, the local transfer
    targets and a local optimizer LLM."""
    writer = local_optimizer_model(config)
    return list(dict.fromkeys(config["models"] + config.get("transfer_targets", []) + ([writer] if writer else [])))
