"""What a config will cost, before anything runs (``prompt-suite plan``).

From the validated config alone (the same helpers the workflow uses): the jobs per rule,
the task and optimizer calls the budgets allow, the test generations of the evaluate
jobs, and, where earlier runs on this machine left Snakemake benchmark files
(``logs/benchmark/``), an estimate of the wall time. For a run under way (or resumed), what
its ``results/`` already holds (finished jobs, optimize jobs' checkpoints) is taken off in
an estimate of what is left, and the time each rule took here so far is summed.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import suite_config


@dataclass
class Rates:
    """What earlier runs on this machine took, from Snakemake's benchmark files beside their results."""

    seconds_per_task_call: dict[str, float] = field(default_factory=dict)  # optimize jobs, per task model
    seconds_per_generation: dict[str, float] = field(default_factory=dict)  # evaluate jobs, per target model
    seconds_per_job: dict[str, float] = field(default_factory=dict)  # every other rule


@dataclass
class Work:
    """Jobs and what they spend: a whole config's, or what its results here do not hold yet."""

    jobs: dict[str, int]
    task_calls: dict[str, int]  # per task model: the most its optimization runs may spend
    test_generations: dict[str, int]  # per target: test rows x prompts x 2 passes (reasoning, answer)


@dataclass
class Plan:
    jobs: dict[str, int]
    task_calls: dict[str, int]  # per task model: the most its optimization runs may spend
    optimizer_calls: int
    test_rows: dict[str, int]  # per task
    prompt_files_per_task: int
    test_generations: dict[str, int]  # per target: test rows x prompts x 2 passes (reasoning, answer)
    rates: Rates
    cores: int = 1
    shortfalls: list[str] = field(default_factory=list)  # budgets too small for a step (budget_shortfalls)
    threads_per_job: int = 1  # runtime.threads: what every optimize and evaluate job takes of the cores
    left: Work | None = None  # what the results here do not hold yet (None: not looked at)
    spent: dict[str, list[float]] = field(default_factory=dict)  # this config's jobs measured here: rule -> seconds

    @property
    def parallel_jobs(self) -> int:
        """Jobs Snakemake runs at once (it caps a job's threads at the cores it was given)."""
        return max(1, self.cores // min(self.threads_per_job, self.cores))

    @property
    def whole(self) -> Work:
        return Work(self.jobs, self.task_calls, self.test_generations)

    @property
    def estimate(self) -> tuple[float, list[str]] | None:
        """The whole config's :meth:`estimate_of`."""
        return self.estimate_of(self.whole)

    def estimate_of(self, work: Work) -> tuple[float, list[str]] | None:
        """(wall seconds on ``cores`` cores, parts without a measurement), or None before any measurement.

        The measured job times are each job's own, on its ``threads_per_job`` threads, so the sum is
        divided by the jobs that run at once, not by the cores. A model's rate is its own: models differ
        several-fold in cost, so a model never measured here is left out of the sum and named (the
        estimate is then a lower bound)."""
        rates, seconds, unmeasured = self.rates, 0.0, []
        for model, calls in work.task_calls.items():
            rate = rates.seconds_per_task_call.get(model)
            seconds += calls * rate if rate is not None else 0.0
            unmeasured += [f"optimize on {model}"] if rate is None and calls else []
        for target, generations in work.test_generations.items():
            rate = rates.seconds_per_generation.get(target)
            seconds += generations * rate if rate is not None else 0.0
            unmeasured += [f"evaluate on {target}"] if rate is None and generations else []
        for rule, n in work.jobs.items():
            if rule not in ("optimize", "evaluate"):
                seconds += n * rates.seconds_per_job.get(rule, 0.0)
        measured = (any(model in rates.seconds_per_task_call for model in work.task_calls)
                    or any(target in rates.seconds_per_generation for target in work.test_generations))
        if unmeasured and not measured:
            return None
        return seconds / self.parallel_jobs, unmeasured

    def _estimate_line(self, label: str, estimate: tuple[float, list[str]]) -> str:
        seconds, unmeasured = estimate
        return (f"{label} on {self.cores} cores ({self.parallel_jobs} job(s) of {self.threads_per_job} threads at a "
                f"time): {'at least ' if unmeasured else ''}{seconds / 60:.0f} min (budgets fully spent, at the "
                "seconds per task call and per test generation measured here before)"
                + (f"; not measured here, so not counted: {', '.join(unmeasured)}" if unmeasured else ""))

    def lines(self) -> list[str]:
        out = ["jobs by rule:"] + [f"  {rule:16s} {n:6d}" for rule, n in self.jobs.items()]
        out += [f"  {'total':16s} {sum(self.jobs.values()):6d}",
                "task calls (at most, all optimization runs): " + ", ".join(
                    f"{calls:,} on {model}" for model, calls in self.task_calls.items()),
                f"optimizer calls (at most): {self.optimizer_calls:,}",
                "test rows per task: " + ", ".join(f"{t} {n}" for t, n in self.test_rows.items()),
                f"prompt files per task: {self.prompt_files_per_task} (identical prompts are evaluated once)",
                "test generations (rows x prompts x 2 passes): " + ", ".join(
                    f"{n:,} on {target}" for target, n in self.test_generations.items())]
        out += [f"warning: {line}" for line in self.shortfalls]
        estimate = self.estimate
        if estimate is None:
            out.append("estimated wall time: no measurements yet (logs/benchmark/ fills as jobs run on this machine)")
        else:
            out.append(self._estimate_line("estimated wall time", estimate))
        if self.left is not None and self.left.jobs != self.jobs:
            done = sum(self.jobs.values()) - sum(self.left.jobs.values())
            left_jobs = ", ".join(f"{rule} {n}" for rule, n in self.left.jobs.items() if n) or "nothing"
            out.append(f"done here: {done} of {sum(self.jobs.values())} jobs (their outputs are in results/; "
                       f"`snakemake -n` says whether any must be redone); left: {left_jobs}; task calls left: "
                       + ", ".join(f"{calls:,} on {model}" for model, calls in self.left.task_calls.items()))
            left = self.estimate_of(self.left)
            if left is not None:
                out.append(self._estimate_line("estimated wall time left", left))
        if self.spent:
            out.append("time this config's jobs took here (logs/benchmark/, each job's own, summed): " + "; ".join(
                f"{rule} {len(times)} job(s) {_duration(sum(times))}" for rule, times in self.spent.items()))
        return out


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def _optimize_job_seconds(benchmark: float | None, result: dict) -> float | None:
    """An optimize job's time: Snakemake's benchmark file holds only the last attempt of a job resumed
    from its checkpoint, while the result's model time (restored with the budget) covers every attempt."""
    usage = result.get("budget", {})
    model_seconds = sum(usage.get(side, {}).get("seconds", 0.0) for side in ("task_model", "optimizer_model"))
    if benchmark is None:
        return None
    return max(benchmark, model_seconds)


def _benchmark_seconds(path: Path) -> float | None:
    try:
        with path.open() as handle:
            return float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    except (OSError, StopIteration, KeyError, ValueError):
        return None


def measured_rates(benchmark_dir: str | Path = "logs/benchmark", results_dir: str | Path = "results") -> Rates:
    """Seconds per task call (optimize) and per test generation (evaluate), from earlier jobs' benchmark
    files and the results they wrote; seconds per job for the other rules. Each is the median over
    the jobs measured, so that one job slowed by something else (paused, sharing its cores) does not
    set the rate."""
    benchmark_dir, results_dir = Path(benchmark_dir), Path(results_dir)
    per_call: dict[str, list[float]] = {}
    for path in benchmark_dir.glob("optimize/*/*/*/seed*.tsv"):
        task, model, optimizer = path.parts[-4:-1]
        result = _prompt_file(results_dir, task, model, optimizer, path.stem.removeprefix("seed"))
        try:
            record = json.loads(result.read_text())
            calls = record["budget"]["task_calls"]
        except (OSError, KeyError, TypeError, ValueError):
            continue
        seconds = _optimize_job_seconds(_benchmark_seconds(path), record)
        if seconds is not None and calls:
            per_call.setdefault(model, []).append(seconds / calls)
    per_generation: dict[str, list[float]] = {}
    for path in benchmark_dir.glob("evaluate/*/*.tsv"):
        task, target = path.parts[-2], path.stem
        cells = [json.loads(p.read_text()) for p in results_dir.glob(f"eval/{task}/*/*/seed*/{target}.json")]
        generations = 2 * cells[0]["n"] * len({c["prompt"] for c in cells}) if cells else 0  # prompts run once
        seconds = _benchmark_seconds(path)
        if seconds is not None and generations:
            per_generation.setdefault(target, []).append(seconds / generations)
    per_job: dict[str, list[float]] = {}
    for path in benchmark_dir.glob("*/**/*.tsv"):
        rule = path.relative_to(benchmark_dir).parts[0]
        seconds = _benchmark_seconds(path)
        if rule not in ("optimize", "evaluate") and seconds is not None:
            per_job.setdefault(rule, []).append(seconds)
    return Rates(_medians(per_call), _medians(per_generation), _medians(per_job))


def _medians(groups: dict[str, list[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in groups.items()}


def budget_shortfalls(config: dict, allow_download: bool = True) -> list[str]:
    """One line per optimizer and task whose task-call budget cannot guarantee a single step of the
    method's own (``Optimizer.minimum_task_calls``, from its options and the dev reserve): such a run
    would likely return the initial prompt. ``config`` validated. Without ``allow_download``, tasks
    whose data is not on this machine yet are passed over (the workflow downloads it later)."""
    from optimizers.base import get_optimizer
    from suite_errors import DataError
    from tasks.splits import load_task_data

    lines = []
    n_dev = config["terms"].get("n_dev")
    for task in config["tasks"]:
        budget = suite_config.budget_for(config, task).get("max_task_calls")
        if budget is None:  # no cap: nothing falls short
            continue
        try:
            data = load_task_data(task, config.get("data_root"), allow_download=allow_download)
        except DataError:
            if allow_download:
                raise
            continue
        dev_rows = min(n_dev or len(data.dev), len(data.dev))
        for name, options in config["optimizers"].items():
            shortfall = get_optimizer(name)(**options).budget_shortfall(budget, len(data.train), dev_rows)
            if shortfall:
                lines.append(f"{name} on {task}: {shortfall}")
    return lines


def plan(config: dict, cores: int = 1, benchmark_dir: str | Path = "logs/benchmark",
         results_dir: str | Path = "results") -> Plan:
    """``config`` as read from its YAML file; validated here."""
    from optimizers.base import get_optimizer
    from tasks import get_task
    from tasks.heldout import load_test_examples

    config = suite_config.validate_config(config)
    tasks, models, seeds = config["tasks"], config["models"], config["seeds"]
    optimizers, external = list(config["optimizers"]), list(config.get("external_methods", {}))
    targets = suite_config.target_models(config)
    jobs = {"write_splits": len(tasks), "prepare_model": len(suite_config.local_models(config)),
            "optimize": len(tasks) * len(optimizers) * len(models) * len(seeds)}
    if external:
        jobs["external methods"] = len(tasks) * len(external) * len(models) * len(seeds)
    jobs |= {"evaluate": len(tasks) * len(targets), "report": 1}
    task_calls, optimizer_calls = dict.fromkeys(models, 0), 0
    for task in tasks:
        caps = suite_config.budget_for(config, task)
        for optimizer in map(get_optimizer, optimizers):
            if optimizer.fixed:
                continue
            for model in models:
                task_calls[model] += len(seeds) * (caps.get("max_task_calls") or 0)
            if optimizer.uses_optimizer_llm:
                optimizer_calls += len(models) * len(seeds) * (caps.get("max_optimizer_calls") or 0)
    limit = (config.get("evaluation") or {}).get("limit")
    test_rows = {}
    for task in tasks:
        rows = len(load_test_examples(get_task(task), data_root=config.get("data_root"),
                                      allow_download=config.get("allow_download", True)))
        test_rows[task] = min(rows, limit) if limit else rows
    prompt_files = (len(optimizers) + len(external)) * len(models) * len(seeds)
    generations = {target: 2 * sum(test_rows.values()) * prompt_files for target in targets}
    return Plan(jobs, task_calls, optimizer_calls, test_rows, prompt_files, generations,
                measured_rates(benchmark_dir, results_dir), cores,
                budget_shortfalls(config, allow_download=config.get("allow_download", True)),
                config["runtime"]["threads"], _left(config, test_rows, Path(results_dir)),
                _spent(config, Path(benchmark_dir), Path(results_dir)))


def _spent(config: dict, benchmark_dir: Path, results_dir: Path) -> dict[str, list[float]]:
    """Each of this config's jobs that left a benchmark file here: rule (optimize: per method) -> seconds.
    External methods' rules are found by their benchmark files' ``{rule}/{task}/{model}/seed{seed}`` paths."""
    tasks, models, seeds = config["tasks"], config["models"], config["seeds"]
    runs = [(task, model, seed) for task in tasks for model in models for seed in seeds]
    spent: dict[str, list[float]] = {}

    def add(rule: str, seconds: float | None) -> None:
        if seconds is not None:
            spent.setdefault(rule, []).append(seconds)

    for task in tasks:
        add("write_splits", _benchmark_seconds(benchmark_dir / f"write_splits/{task}.tsv"))
    for model in suite_config.local_models(config):
        add("prepare_model", _benchmark_seconds(benchmark_dir / f"prepare_model/{model}.tsv"))
    for name in config["optimizers"]:
        for task, model, seed in runs:
            try:
                record = json.loads(_prompt_file(results_dir, task, model, name, seed).read_text())
            except (OSError, ValueError):
                record = {}
            benchmark = _benchmark_seconds(benchmark_dir / f"optimize/{task}/{model}/{name}/seed{seed}.tsv")
            add(f"optimize ({name})", _optimize_job_seconds(benchmark, record))
    known = {"write_splits", "prepare_model", "optimize", "evaluate", "report"}
    for rule_dir in sorted(p for p in benchmark_dir.glob("*") if p.is_dir() and p.name not in known):
        for task, model, seed in runs:
            add(rule_dir.name, _benchmark_seconds(rule_dir / f"{task}/{model}/seed{seed}.tsv"))
    for task in tasks:
        for target in suite_config.target_models(config):
            add("evaluate", _benchmark_seconds(benchmark_dir / f"evaluate/{task}/{target}.tsv"))
    add("report", _benchmark_seconds(benchmark_dir / "report/report.tsv"))
    return spent


def _left(config: dict, test_rows: dict[str, int], results_dir: Path) -> Work:
    """What ``results_dir`` does not hold yet, by the workflow's output paths: a job is done when its
    outputs exist; an unfinished optimize job has left what its checkpoint has not spent."""
    from optimizers.base import get_optimizer

    tasks, models, seeds = config["tasks"], config["models"], config["seeds"]
    methods = list(config["optimizers"]) + list(config.get("external_methods", {}))
    targets = suite_config.target_models(config)
    jobs = {"write_splits": sum(not (results_dir / f"splits/{task}.json").is_file() for task in tasks),
            "prepare_model": sum(not (results_dir / f"models/{model}.json").is_file()
                                 for model in suite_config.local_models(config)),
            "optimize": 0}
    task_calls = dict.fromkeys(models, 0)
    for task in tasks:
        cap = suite_config.budget_for(config, task).get("max_task_calls") or 0
        for name in config["optimizers"]:
            for model in models:
                for seed in seeds:
                    path = _prompt_file(results_dir, task, model, name, seed)
                    if path.is_file():
                        continue
                    jobs["optimize"] += 1
                    if not get_optimizer(name).fixed:
                        task_calls[model] += max(0, cap - _checkpoint_task_calls(path))
    if config.get("external_methods"):
        jobs["external methods"] = sum(
            not _prompt_file(results_dir, task, model, method, seed).is_file()
            for task in tasks for method in config["external_methods"] for model in models for seed in seeds)
    evaluations_left = {target: [task for task in tasks if not all(
        (results_dir / f"eval/{task}/{model}/{method}/seed{seed}/{target}.json").is_file()
        for model in models for method in methods for seed in seeds)] for target in targets}
    jobs["evaluate"] = sum(map(len, evaluations_left.values()))
    generations = {target: 2 * sum(test_rows[task] for task in left) * len(methods) * len(models) * len(seeds)
                   for target, left in evaluations_left.items()}
    finished = not any(jobs.values()) and (results_dir / "tables/main.csv").is_file()
    return Work(jobs | {"report": 0 if finished else 1}, task_calls, generations)


def _prompt_file(results_dir: Path, task: str, model: str, method: str, seed) -> Path:
    """The workflow's prompt file of one run (``optimizers.contract``'s ``results/prompts/...`` layout)."""
    return results_dir / "prompts" / task / model / method / f"seed{seed}.json"


def _checkpoint_task_calls(result: Path) -> int:
    """Task calls an interrupted optimize job has spent (its default checkpoint), else 0."""
    from optimizers.base import Checkpoint, OptionError

    try:
        return int((Checkpoint.beside(result).load() or {})["budget"]["task_calls"])
    except (OptionError, KeyError, TypeError, ValueError):
        return 0
