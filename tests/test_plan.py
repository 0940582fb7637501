"""`prompt-suite plan`: what a config will run and cost, before anything runs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from suite_plan import plan

ROOT = Path(__file__).resolve().parent.parent


def _snakemake_jobs(config_file: str) -> dict[str, int]:
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--forceall", "--cores", "1",
                             "--configfile", config_file], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE)}


def test_the_plan_counts_the_jobs_snakemake_will_run():
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    preview = plan(config)
    dag = _snakemake_jobs("config/default.yaml")
    for rule in ("write_splits", "prepare_model", "optimize", "evaluate", "report"):
        assert preview.jobs[rule] == dag[rule], rule
    assert preview.jobs["external methods"] == dag["manual_prompts"]
    # 6 searching methods x 3 tasks x 1 model x 1 seed, each capped at 360 task calls
    assert preview.task_calls == {"qwen2.5-coder-0.5b": 6 * 3 * 360}
    assert preview.test_rows == {task: 100 for task in config["tasks"]}
    assert preview.test_generations["smollm2-135m"] == 2 * 300 * 8


def test_the_estimate_scales_measured_rates_to_the_planned_work(tmp_path):
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"zero_shot_cot": {}, "opro": {}},
              "budget": {"max_task_calls": 100, "max_optimizer_calls": 10}, "evaluation": {"limit": 10}}
    bench, results = tmp_path / "logs" / "benchmark", tmp_path / "results"
    tsv = "s\th:m:s\n{}\t0:00:00\n"
    (bench / "optimize/navigate/smollm2-135m/opro").mkdir(parents=True)
    (bench / "optimize/navigate/smollm2-135m/opro/seed0.tsv").write_text(tsv.format(50.0))
    (results / "prompts/navigate/smollm2-135m/opro").mkdir(parents=True)
    (results / "prompts/navigate/smollm2-135m/opro/seed0.json").write_text(json.dumps({"budget": {"task_calls": 25}}))
    (bench / "evaluate/navigate").mkdir(parents=True)
    (bench / "evaluate/navigate/smollm2-135m.tsv").write_text(tsv.format(40.0))
    for method, prompt in (("opro", "a"), ("zero_shot_cot", "b"), ("manual", "b")):
        cell = results / f"eval/navigate/smollm2-135m/{method}/seed0/smollm2-135m.json"
        cell.parent.mkdir(parents=True)
        cell.write_text(json.dumps({"n": 10, "prompt": prompt}))
    (bench / "report").mkdir(parents=True)
    (bench / "report/report.tsv").write_text(tsv.format(3.0))
    # optimize: 2 s per task call x 100; evaluate: 40 s / (2 distinct prompts x 10 rows x 2 passes) = 1 s per
    # generation x (10 rows x 2 prompt files x 2 passes); report 3 s; no splits or models measured
    work = 2.0 * 100 + 1.0 * 40 + 3.0
    # every job takes runtime.threads (2 by default): on 2 cores they run one at a time, on 4 two at a time
    preview = plan(config, cores=2, benchmark_dir=bench, results_dir=results)
    seconds, unmeasured = preview.estimate
    assert unmeasured == [] and seconds == work
    assert any("estimated wall time on 2 cores (1 job(s) of 2 threads at a time): 4 min" in line
               for line in preview.lines())
    assert plan(config, cores=4, benchmark_dir=bench, results_dir=results).estimate[0] == work / 2
    assert plan({**config, "runtime": {"threads": 8}}, cores=4, benchmark_dir=bench,
                results_dir=results).estimate[0] == work


def test_a_resumed_optimize_job_is_priced_by_all_its_attempts(tmp_path):
    """Snakemake's benchmark file of a job resumed from its checkpoint holds only the last attempt;
    the result's model time, restored with the budget, covers every attempt."""
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"opro": {}},
              "budget": {"max_task_calls": 100}, "evaluation": {"limit": 10}}
    bench, results = tmp_path / "logs" / "benchmark", tmp_path / "results"
    (bench / "optimize/navigate/smollm2-135m/opro").mkdir(parents=True)
    (bench / "optimize/navigate/smollm2-135m/opro/seed0.tsv").write_text("s\th:m:s\n10.0\t0:00:10\n")
    (results / "prompts/navigate/smollm2-135m/opro").mkdir(parents=True)
    (results / "prompts/navigate/smollm2-135m/opro/seed0.json").write_text(json.dumps({"budget": {
        "task_calls": 20, "task_model": {"seconds": 70.0}, "optimizer_model": {"seconds": 10.0}}}))
    rates = plan(config, benchmark_dir=bench, results_dir=results).rates
    assert rates.seconds_per_task_call == {"smollm2-135m": 80.0 / 20}


def test_a_model_never_measured_here_is_named_not_priced_at_another_models_rate(tmp_path):
    """Qwen2.5-Coder costs several times SmolLM2 per call: SmolLM2's rate must not stand in for it."""
    config = {"tasks": ["navigate"], "models": ["qwen2.5-coder-0.5b"], "transfer_targets": ["smollm2-135m"],
              "optimizers": {"opro": {}}, "budget": {"max_task_calls": 100}, "evaluation": {"limit": 10}}
    bench, results = tmp_path / "logs" / "benchmark", tmp_path / "results"
    (bench / "optimize/navigate/smollm2-135m/opro").mkdir(parents=True)
    (bench / "optimize/navigate/smollm2-135m/opro/seed0.tsv").write_text("s\th:m:s\n50.0\t0:00:00\n")
    (results / "prompts/navigate/smollm2-135m/opro").mkdir(parents=True)
    (results / "prompts/navigate/smollm2-135m/opro/seed0.json").write_text(json.dumps({"budget": {"task_calls": 25}}))
    (bench / "evaluate/navigate").mkdir(parents=True)
    (bench / "evaluate/navigate/smollm2-135m.tsv").write_text("s\th:m:s\n40.0\t0:00:00\n")
    cell = results / "eval/navigate/smollm2-135m/opro/seed0/smollm2-135m.json"
    cell.parent.mkdir(parents=True)
    cell.write_text(json.dumps({"n": 10, "prompt": "a"}))
    preview = plan(config, cores=1, benchmark_dir=bench, results_dir=results)
    seconds, unmeasured = preview.estimate
    assert unmeasured == ["optimize on qwen2.5-coder-0.5b", "evaluate on qwen2.5-coder-0.5b"]
    assert seconds == 2.0 * preview.test_generations["smollm2-135m"]  # 40 s / (10 rows x 2 passes) each
    assert any(line.startswith("estimated wall time on 1 cores (1 job(s) of 2 threads at a time): at least") and
               "not counted: optimize on qwen2.5-coder-0.5b" in line for line in preview.lines())


def test_without_measurements_the_plan_says_so(tmp_path):
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"opro": {}}}
    preview = plan(config, benchmark_dir=tmp_path / "none", results_dir=tmp_path / "none")
    assert preview.estimate is None
    assert any("no measurements yet" in line for line in preview.lines())


def test_the_plan_command_names_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [navigat]\nmodels: [smollm2-135m]\noptimizers: {opro: {}}\n")
    result = subprocess.run([sys.executable, "-m", "suite_cli", "plan", "--configfile", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "navigat" in result.stderr


def test_a_run_under_way_is_planned_by_what_is_left(tmp_path):
    """Finished jobs (their outputs here) are taken off; an interrupted optimize job has left what its
    checkpoint has not spent; the time each rule took here is summed."""
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"zero_shot_cot": {}, "opro": {}, "gpo": {}},
              "budget": {"max_task_calls": 100}, "evaluation": {"limit": 10}}
    bench, results = tmp_path / "logs" / "benchmark", tmp_path / "results"
    for path, text in {
        "splits/navigate.json": "{}", "models/smollm2-135m.json": "{}",
        "prompts/navigate/smollm2-135m/zero_shot_cot/seed0.json": json.dumps({"budget": {"task_calls": 0}}),
        "prompts/navigate/smollm2-135m/gpo/seed0.json": json.dumps({"budget": {"task_calls": 100}}),
        "prompts/navigate/smollm2-135m/opro/seed0.json.checkpoint.json": json.dumps({"budget": {"task_calls": 40}}),
    }.items():
        (results / path).parent.mkdir(parents=True, exist_ok=True)
        (results / path).write_text(text)
    (bench / "optimize/navigate/smollm2-135m/gpo").mkdir(parents=True)
    (bench / "optimize/navigate/smollm2-135m/gpo/seed0.tsv").write_text("s\th:m:s\n300.0\t0:05:00\n")
    (bench / "optimize/gsm8k/smollm2-135m/gpo").mkdir(parents=True)  # another config's job: not this run's time
    (bench / "optimize/gsm8k/smollm2-135m/gpo/seed0.tsv").write_text("s\th:m:s\n999.0\t0:16:39\n")
    preview = plan(config, cores=2, benchmark_dir=bench, results_dir=results)
    assert preview.left.jobs == {"write_splits": 0, "prepare_model": 0, "optimize": 1, "evaluate": 1, "report": 1}
    assert preview.left.task_calls == {"smollm2-135m": 60}  # opro's 100 less its checkpoint's 40; gpo is done
    assert preview.left.test_generations == {"smollm2-135m": 2 * 10 * 3}
    assert preview.rates.seconds_per_task_call == {"smollm2-135m": 3.0}
    lines = preview.lines()
    assert "done here: 4 of 7 jobs" in "\n".join(lines)
    assert any(line.startswith("estimated wall time left on 2 cores (1 job(s) of 2 threads at a time): at least 3 min")
               and "not counted: evaluate on smollm2-135m" in line for line in lines)  # 60 calls x 3 s
    assert any(line.startswith("time this config's jobs took here") and line.endswith(": optimize (gpo) 1 job(s) 5.0 min")
               for line in lines)

    for method in ("zero_shot_cot", "opro", "gpo"):  # the rest of the run: nothing is left
        (results / f"prompts/navigate/smollm2-135m/{method}/seed0.json").write_text(json.dumps({"budget": {}}))
        cell = results / f"eval/navigate/smollm2-135m/{method}/seed0/smollm2-135m.json"
        cell.parent.mkdir(parents=True)
        cell.write_text(json.dumps({"n": 10, "prompt": method}))
    (results / "tables").mkdir()
    (results / "tables/main.csv").write_text("")
    finished = plan(config, cores=2, benchmark_dir=bench, results_dir=results)
    assert not any(finished.left.jobs.values()) and finished.estimate_of(finished.left) == (0.0, [])
    assert "done here: 7 of 7 jobs" in "\n".join(finished.lines())


def test_one_slowed_job_does_not_set_the_rate(tmp_path):
    """A job that was paused or shared its cores reads slow; the rate is the median over the jobs."""
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"opro": {}, "gpo": {}, "ape": {}},
              "budget": {"max_task_calls": 100}, "evaluation": {"limit": 10}}
    bench, results = tmp_path / "logs" / "benchmark", tmp_path / "results"
    for method, seconds in (("opro", 200.0), ("gpo", 220.0), ("ape", 4000.0)):
        (bench / f"optimize/navigate/smollm2-135m/{method}").mkdir(parents=True)
        (bench / f"optimize/navigate/smollm2-135m/{method}/seed0.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")
        (results / f"prompts/navigate/smollm2-135m/{method}").mkdir(parents=True)
        (results / f"prompts/navigate/smollm2-135m/{method}/seed0.json").write_text(
            json.dumps({"budget": {"task_calls": 100}}))
    assert plan(config, benchmark_dir=bench, results_dir=results).rates.seconds_per_task_call == {"smollm2-135m": 2.2}
