"""The ``prompt-suite`` command: the one-line calls Snakemake rules and users make.

Errors a user can fix (``SuiteError``) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _list_tasks(args) -> None:
    import tasks

    for name in tasks.task_names():
        task = tasks.get_task(name)
        print(f"{name:42s} {task.family:6s} {task.answer_format.kind}")


def _list_models(args) -> None:
    from model_engine.registry import get_model_spec, model_names

    for name in model_names():
        spec = get_model_spec(name)
        offline = spec.offline.filename if spec.offline else "-"
        print(f"{name:22s} {spec.hf_id:40s} offline: {offline}")


def _list_optimizers(args) -> None:
    from optimizers.base import get_optimizer, optimizer_names

    for name in optimizer_names():
        optimizer = get_optimizer(name)
        uses = "optimizer LLM" if optimizer.uses_optimizer_llm else "no optimizer LLM"
        print(f"{name}  ({'fixed prompt' if optimizer.fixed else uses})")
        for option, field in optimizer.Options.model_fields.items():
            print(f"  {option:28s} {field.default!r:>24}  {field.description or ''}")


def _schema(args) -> None:
    from optimizers.contract import RESULT_SCHEMA, result_schema, write_result_schema

    if args.write:
        print(f"wrote {write_result_schema()}")
    else:
        print(json.dumps(result_schema(), indent=1))
        if json.loads(RESULT_SCHEMA.read_text()) != result_schema():
            print(f"note: {RESULT_SCHEMA} is out of date; run `prompt-suite schema --write`", file=sys.stderr)


def _prepare_model(args) -> None:
    from dataclasses import asdict

    from model_engine.provenance import environment, write_json_atomic
    from model_engine.registry import get_model_spec, spec_from_config
    from model_engine.sources import prepare

    spec = spec_from_config(args.model, _json_object(args.spec, "--spec")) if args.spec else get_model_spec(args.model)
    prepared = prepare(spec, args.cache_dir, prefer_offline=args.offline or None)
    record = {"model": spec.name, "hf_id": spec.hf_id, "spec": spec.describe(), **asdict(prepared),
              "environment": environment()}
    if args.output:
        write_json_atomic(args.output, record)
    print(json.dumps(record, indent=1))


def _model_from_record(path: str, name: str):
    """The spec and prepared weights a workflow job loads: what the prepare_model job recorded for ``name``."""
    from model_engine.registry import spec_from_record
    from model_engine.sources import prepared_from_record
    from suite_errors import SuiteError

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SuiteError(f"cannot read the prepared-model record {path}: {error}") from None
    if not isinstance(record, dict) or "model" not in record:
        raise SuiteError(f"{path} is not a prepared-model record (prompt-suite prepare-model --output)")
    if record["model"] != name:
        raise SuiteError(f"{path} is the record of model {record['model']!r}, not {name!r}")
    return spec_from_record(record), prepared_from_record(record, path)


def _write_splits(args) -> None:
    import tasks

    path = tasks.write_splits(args.task, args.output, data_root=args.data_root, allow_download=not args.no_download)
    print(f"wrote {path}")


def _json_object(text: str, flag: str) -> dict:
    from suite_errors import SuiteError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SuiteError(f"{flag} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise SuiteError(f"{flag} must be a JSON object, got {text!r}")
    return value


def _set_threads(threads: int | None) -> None:
    """The job's torch threads, set once here (Snakemake passes the job's ``{threads}``)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _load_job_model(name: str, record_path: str | None, runtime: dict):
    """A model by name (prepared here), or from its prepared-model record (a workflow job), in its own
    dtype where its spec sets one."""
    from model_engine.local import load_model
    from model_engine.registry import get_model_spec

    spec, prepared = _model_from_record(record_path, name) if record_path else (get_model_spec(name), None)
    return load_model(spec, **{**runtime, "dtype": spec.dtype or runtime["dtype"]}, prepared=prepared)


_OPTIMIZE_JOB = ("options", "terms", "budget", "runtime", "optimizer_endpoint", "optimizer_model", "cache_dir",
                 "data_root")
_EVALUATE_JOB = ("evaluation", "runtime", "max_reasoning_tokens", "max_prompt_chars", "extractor", "endpoint", "cache_dir",
                 "data_root")


def _job(args, keys: tuple[str, ...], build) -> dict:
    """The job's slice of the validated config: the workflow's ``--job`` (suite_config builds it),
    or built here the same way from ``--configfile`` (defaults from the schema alone)."""
    from suite_errors import SuiteError

    if not args.job:
        return build()
    job = _json_object(args.job, "--job")
    missing = [key for key in keys if key not in job]
    if missing:
        raise SuiteError(f"--job lacks {', '.join(missing)} (the workflow builds it with suite_config; by hand, "
                         "use --configfile)")
    return job


def _optimize(args) -> None:
    from pydantic import ValidationError

    import suite_config
    import tasks
    from model_engine.cache import GenerationCache, generation_cache_path
    from optimizers.base import Budget, Checkpoint, get_optimizer, write_result
    from optimizers.contract import RunContext, Terms
    from suite_errors import SuiteError

    job = _job(args, _OPTIMIZE_JOB, lambda: suite_config.optimize_job(
        suite_config.job_from_configfile(args.configfile, args.task, [args.model], args.optimizer),
        args.task, args.model, args.optimizer))
    optimizer_class = get_optimizer(args.optimizer)
    optimizer = optimizer_class(**job["options"])  # bad options fail here, before any load
    try:
        terms = Terms(**job["terms"])
    except ValidationError as error:
        first = error.errors()[0]
        raise SuiteError(f"terms: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    budget = Budget(job["budget"].get("max_task_calls"), job["budget"].get("max_optimizer_calls"))
    data = tasks.load_task_data(args.task, data_root=job["data_root"], split_file=args.split_file)
    _set_threads(args.threads)
    cache = GenerationCache(generation_cache_path(job["cache_dir"], args.task, args.model, args.optimizer, args.seed))
    runtime = {**job["runtime"], "cache_dir": job["cache_dir"], "generation_cache": cache}
    model = _load_job_model(args.model, args.model_record, runtime)
    optimizer_model = None  # the task model writes its own prompts (self-optimization)
    if job["optimizer_endpoint"]:
        from model_engine.endpoint import EndpointModel

        endpoint = job["optimizer_endpoint"]
        optimizer_model = EndpointModel(endpoint["base_url"], endpoint["model"], api_key_env=endpoint.get("api_key_env"),
                                        cache=cache, timeout_s=endpoint["timeout_s"])
        optimizer_model.check()  # fail now, not after hours of work
    elif job["optimizer_model"]:
        optimizer_model = _load_job_model(job["optimizer_model"], args.optimizer_model_record, runtime)
    checkpoint = Checkpoint(args.checkpoint) if args.checkpoint else Checkpoint.beside(args.output)
    context = RunContext(data=data, task_model=model, budget=budget, terms=terms, seed=args.seed,
                         checkpoint=checkpoint, optimizer_model=optimizer_model)
    result = optimizer.optimize(context)
    result.provenance.config = {**job, "terms": terms.model_dump(), "split_file": args.split_file,
                                "runtime": {**job["runtime"], "dtype": model.dtype}}
    write_result(args.output, result)
    if checkpoint.path.exists():
        checkpoint.path.unlink()  # the result is written; a rerun starts afresh
    print(f"wrote {args.output}: {result.prompt!r} (stopped: {result.stopped.reason})")


def _evaluate(args) -> None:
    import suite_config
    from evaluation.run import build_lm, evaluate_prompt_files, output_path, read_prompt_file, response_cache_path
    from suite_errors import SuiteError

    job = _job(args, _EVALUATE_JOB, lambda: suite_config.evaluate_job(
        suite_config.job_from_configfile(args.configfile, args.task, [args.target]), args.task, args.target))
    records = {path: read_prompt_file(path) for path in args.prompt_files}  # bad files fail before the model loads
    for path, record in records.items():
        if len(record["prompt"]) > job["max_prompt_chars"]:
            raise SuiteError(f"Prompt file {path}: its prompt has {len(record['prompt'])} characters, more than "
                             f"terms.max_prompt_chars ({job['max_prompt_chars']})")
    if args.outputs:  # a workflow job writes exactly what its rule declares, checked before the model loads
        planned = {output_path(args.output_dir, record, args.target) for record in records.values()}
        declared = {Path(path).resolve() for path in args.outputs}
        if planned != declared:
            differ = sorted(map(str, planned ^ declared))[:3]
            raise SuiteError(f"the prompt files would write other evaluation files than the rule declares "
                             f"(e.g. {', '.join(differ)}): a prompt file's task, model, optimizer or seed field "
                             "does not match its path")
    evaluation, endpoint = job["evaluation"], job["endpoint"]
    backend = "endpoint" if endpoint else evaluation["backend"]
    model = _model_from_record(args.model_record, args.target) if args.model_record and not endpoint else None
    _set_threads(args.threads)
    lm, description = build_lm(backend, args.target, job["cache_dir"], job["runtime"]["dtype"], job["runtime"]["device"],
                               evaluation["batch_size"], endpoint, model=model, vllm_options=evaluation.get("vllm"))
    workdir = args.workdir or str(Path(args.output_dir) / args.task / f".lmeval-{args.target}")
    written = evaluate_prompt_files(args.task, args.target, records, args.output_dir, workdir, lm, description,
                                    split_file=args.split_file, data_root=job["data_root"], limit=evaluation["limit"],
                                    max_reasoning_tokens=job["max_reasoning_tokens"], extractor_variant=job["extractor"],
                                    response_cache=None if args.no_response_cache
                                    else response_cache_path(job["cache_dir"], description, args.task))
    print(f"wrote {len(written)} evaluation files")


def _report(args) -> None:
    from evaluation.report import build_report
    from suite_errors import SuiteError

    eval_files, prompt_files = args.eval_files or [], args.prompt_files or []
    if args.results_dir:  # whatever exists under a results folder
        root = Path(args.results_dir)
        eval_files += sorted(str(p) for p in root.glob("eval/*/*/*/seed*/*.json"))
        prompt_files += sorted(str(p) for p in root.glob("prompts/*/*/*/seed*.json"))
    if not eval_files:
        raise SuiteError("report: no evaluation files (give --eval-files or --results-dir)")
    for path in build_report(eval_files, prompt_files, args.tables_dir, args.plots_dir, args.pages_dir,
                             allow_missing=args.allow_missing):
        print(f"wrote {path}")


def _plan(args) -> None:
    from suite_config import read_configfile
    from suite_plan import plan

    config = read_configfile(args.configfile)
    print(f"{args.configfile}:")
    for line in plan(config, cores=args.cores, benchmark_dir=args.benchmark_dir, results_dir=args.results_dir).lines():
        print(line)


def _manual_prompt(args) -> None:
    import hashlib

    import yaml

    import tasks
    from model_engine.provenance import environment
    from optimizers.base import write_result
    from optimizers.contract import BudgetRecord, PromptResult, Provenance, Stopped, Terms, TrajectoryStep
    from suite_errors import SuiteError

    task = tasks.get_task(args.task)
    try:
        prompts = yaml.safe_load(Path(args.prompts).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SuiteError(f"cannot read manual prompts {args.prompts}: {error}") from None
    if not isinstance(prompts, dict):
        raise SuiteError(f"{args.prompts} must map task names (or 'default') to prompts")
    prompt = prompts.get(task.name, prompts.get("default"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise SuiteError(f"{args.prompts} has no prompt for task {task.name!r} and no 'default' prompt")
    prompt = prompt.strip()
    cap = args.max_prompt_chars or Terms.model_fields["max_prompt_chars"].default
    if len(prompt) > cap:
        raise SuiteError(f"{args.prompts}: the prompt for {task.name} has {len(prompt)} characters, more than "
                         f"terms.max_prompt_chars ({cap})")
    record = PromptResult(
        optimizer="manual", task=task.name, model=args.model, prompt=prompt, initial_prompt=prompt,
        trajectory=[TrajectoryStep(step=0, prompt=prompt, task_calls=0, optimizer_calls=0)],
        stopped=Stopped(reason="fixed", detail="a hand-written prompt", task_calls=0, optimizer_calls=0),
        budget=BudgetRecord(task_calls=0, optimizer_calls=0),
        provenance=Provenance(seed=args.seed, model={"name": args.model, "checksum": "none: hand-written prompt"},
                              environment=environment(), prompts_file=args.prompts,
                              prompts_file_sha256=hashlib.sha256(Path(args.prompts).read_bytes()).hexdigest()),
    )
    write_result(args.output, record)
    print(f"wrote {args.output}: {prompt!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompt-suite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tasks", help="list the registered tasks").set_defaults(run=_list_tasks)
    commands.add_parser("models", help="list the registered models").set_defaults(run=_list_models)
    prepare = commands.add_parser("prepare-model", help="check and convert a model's offline source (once)")
    prepare.add_argument("model")
    prepare.add_argument("--cache-dir", default=None, help="where converted models live (default: PROMPT_SUITE_CACHE)")
    prepare.add_argument("--offline", action="store_true", help="use the offline source even with hub access")
    prepare.add_argument("--output", default=None, help="also write the record (source, checksum, versions) here")
    prepare.add_argument("--spec", default=None,
                         help="a model the registry lacks, as a JSON object: hf_id, revision, chat, dtype "
                              "(a config's hub_models entry)")
    prepare.set_defaults(run=_prepare_model)
    splits = commands.add_parser("write-splits", help="write a task's train/dev/test id lists")
    splits.add_argument("task")
    splits.add_argument("output")
    splits.add_argument("--data-root", default=None, help="benchmark data folder (default: see README)")
    splits.add_argument("--no-download", action="store_true", help="never fetch missing data files")
    splits.set_defaults(run=_write_splits)
    job_help = ("the job's settings as the workflow passes them (JSON: its slice of the validated config); "
                "by hand, give --configfile instead")
    config_help = "a config file (config/README.md); its settings for this job, defaults from the schema"
    optimize = commands.add_parser("optimize", help="optimize a prompt for one task x model x optimizer")
    optimize.add_argument("task")
    optimize.add_argument("model")
    optimize.add_argument("optimizer")
    optimize.add_argument("--output", required=True, help="the result JSON (results/prompts/{task}/{model}/{optimizer}.json)")
    settings = optimize.add_mutually_exclusive_group()
    settings.add_argument("--configfile", default=None, help=config_help + " (none: every default)")
    settings.add_argument("--job", default=None, help=job_help)
    optimize.add_argument("--seed", type=int, default=0)
    optimize.add_argument("--split-file", default=None, help="split id lists (prompt-suite write-splits)")
    optimize.add_argument("--checkpoint", default=None, help="default: OUTPUT.checkpoint.json")
    optimize.add_argument("--model-record", default=None,
                          help="load the task model from this prepare-model record (default: prepare it here)")
    optimize.add_argument("--optimizer-model-record", default=None, help="the same for a local optimizer LLM")
    optimize.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's choice)")
    optimize.set_defaults(run=_optimize)
    evaluate = commands.add_parser("evaluate", help="evaluate optimized prompts on a target model (lm-eval, test split)")
    evaluate.add_argument("task")
    evaluate.add_argument("target", help="target model name (an endpoint target: its label in the config)")
    evaluate.add_argument("--prompt-files", nargs="+", required=True, help="results/prompts/{task}/{model}/{optimizer}.json")
    settings = evaluate.add_mutually_exclusive_group()
    settings.add_argument("--configfile", default=None,
                          help=config_help + ": evaluation.*, runtime.*, terms' reasoning limit and extractor, "
                               "endpoint_targets (none: every default)")
    settings.add_argument("--job", default=None, help=job_help)
    evaluate.add_argument("--output-dir", default="results/eval")
    evaluate.add_argument("--outputs", nargs="+", default=None,
                          help="the evaluation files this job must write (the workflow's declared outputs): "
                               "checked before the model loads")
    evaluate.add_argument("--workdir", default=None, help="where lm-eval task YAMLs and documents are written")
    evaluate.add_argument("--split-file", default=None)
    evaluate.add_argument("--model-record", default=None,
                          help="load the target from this prepare-model record (default: prepare it here)")
    evaluate.add_argument("--no-response-cache", action="store_true",
                          help="do not reuse or store responses (an interrupted job then starts over)")
    evaluate.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's choice)")
    evaluate.set_defaults(run=_evaluate)
    report = commands.add_parser(
        "report", help="tables (CSV, Markdown, LaTeX, HTML), plots and sample pages from evaluation files")
    report.add_argument("--eval-files", nargs="+", help="evaluation files (.json beside their .samples.jsonl)")
    report.add_argument("--prompt-files", nargs="+", help="the prompt files the evaluations came from")
    report.add_argument("--results-dir", help="report on every evaluation and prompt file under this folder")
    report.add_argument("--allow-missing", action="store_true",
                        help="list absent evaluation files as missing cells instead of failing (partial results)")
    report.add_argument("--tables-dir", default="results/tables")
    report.add_argument("--plots-dir", default="results/plots")
    report.add_argument("--pages-dir", default="results/pages", help="the sample browser's HTML pages")
    report.set_defaults(run=_report)
    preview = commands.add_parser("plan", help="what a config will run and cost, before anything runs")
    preview.add_argument("--configfile", default="config/default.yaml")
    preview.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores the workflow will use")
    preview.add_argument("--benchmark-dir", default="logs/benchmark",
                         help="Snakemake benchmark files of earlier runs on this machine (for the time estimate)")
    preview.add_argument("--results-dir", default="results",
                         help="the workflow's results: what they hold is done (and prices the measured jobs)")
    preview.set_defaults(run=_plan)
    manual = commands.add_parser("manual-prompt", help="the prompt contract from hand-written prompts (an external method)")
    manual.add_argument("task")
    manual.add_argument("model")
    manual.add_argument("prompts", help="YAML: task name (or 'default') -> prompt")
    manual.add_argument("--seed", type=int, default=0, help="the replicate this file stands for (the prompt is fixed)")
    manual.add_argument("--output", required=True)
    manual.add_argument("--max-prompt-chars", type=_positive_int, default=None,
                        help="refuse a longer prompt (default: the terms' default; the workflow passes the config's)")
    manual.set_defaults(run=_manual_prompt)
    commands.add_parser("optimizers", help="list the registered optimizers and their options").set_defaults(
        run=_list_optimizers)
    schema = commands.add_parser("schema", help="print the prompt-result JSON schema (generated from the contract)")
    schema.add_argument("--write", action="store_true", help="rewrite optimizers/prompt_result.schema.json")
    schema.set_defaults(run=_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from suite_errors import SuiteError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    try:
        args.run(args)
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the user gave that cannot be read or written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
