"""The Snakemake workflow: every config plans, bad configs fail before the DAG is built."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _dry_run(*args, cwd=ROOT):
    result = subprocess.run(
        [SNAKEMAKE, "-n", "--forceall", "--cores", "1", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    result.output = result.stdout + result.stderr
    return result


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_every_config_plans(config):
    result = _dry_run("--configfile", f"config/{config}")
    assert result.returncode == 0, result.output[-2000:]
    for rule in ("write_splits", "prepare_model", "optimize", "evaluate", "report"):
        assert rule in result.output


def test_paper_config_plans_the_whole_grid():
    result = _dry_run("--configfile", "config/paper.yaml")
    assert result.returncode == 0
    assert re.search(r"write_splits\s+23\b", result.output), result.output  # 21 BBH tasks + GSM8K + FOLIO
    assert re.search(r"optimize\s+966\b", result.output)  # 23 tasks x 2 models x 7 methods x 3 seeds
    assert re.search(r"evaluate\s+46\b", result.output)  # 23 tasks x 2 target models


def _bad_config(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return _dry_run("--configfile", str(path))


def test_unknown_task_in_config_is_named_with_suggestion(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigat]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n")
    assert result.returncode != 0
    assert "Unknown task 'navigat'" in result.output and "Did you mean 'navigate'" in result.output


def test_unknown_model_in_config_is_named(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [gpt-5]\noptimizers: {zero_shot_cot: {}}\n")
    assert result.returncode != 0 and "Unknown model 'gpt-5'" in result.output


def test_type_error_names_the_key(tmp_path):
    result = _bad_config(tmp_path, "tasks: navigate\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n")
    assert result.returncode != 0
    assert "tasks" in result.output and "is not of type 'array'" in result.output


def test_unknown_optimizer_and_bad_option_are_named(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {gretaer: {}}\n")
    assert result.returncode != 0 and "Unknown optimizer 'gretaer'. Did you mean 'greater'" in result.output
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {opro: {stepz: 3}}\n")
    assert result.returncode != 0 and "optimizers.opro: Additional properties are not allowed ('stepz'" in result.output


BASE = "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n"


@pytest.mark.parametrize("text, message", [
    ("optimizers: {greater: {n_train: 0}}", "optimizers.greater.n_train: 0 is less than the minimum of 1"),
    ("optimizers: {protegi: {selection: best}}", "optimizers.protegi.selection: 'best' is not one of"),
    ("optimizers: {gpo: {epochs: two}}", "optimizers.gpo.epochs: 'two' is not of type 'integer'"),
    ("terms: {n_dev: -3}", "terms.n_dev: -3 is not valid under any of the given schemas"),
    ("terms: {initial_prompt: ''}", "terms.initial_prompt: '' should be non-empty"),
    ("budget: {families: {bbhh: {max_task_calls: 5}}}", "budget.families: 'bbhh' is not one of ['bbh', 'folio', 'gsm8k']"),
    ("budget: {tasks: {navigate: {max_task_calls: -1}}}", "budget.tasks.navigate.max_task_calls: -1 is less than"),
    ("runtime: {device: gpu}", "runtime.device: 'gpu' does not match"),
    ("optimizer_llm: {model: gpt-9}", "Unknown model 'gpt-9'"),
])
def test_bad_values_are_named_by_their_json_path(tmp_path, text, message):
    config = yaml.safe_load(BASE) | yaml.safe_load(text)
    result = _bad_config(tmp_path, yaml.safe_dump(config))
    assert result.returncode != 0 and message in result.output, result.output[-1500:]


def test_config_validation_never_imports_torch():
    """Planning needs no ML stack: the optimizer registry reads source files and imports option models only."""
    code = ("import sys, yaml, suite_config\n"
            "config = yaml.safe_load(open('config/paper.yaml'))\n"
            "suite_config.validate_config(config)\n"
            "assert config['optimizers']['greater']['n_train'] == 50\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_budgets_resolve_per_task_then_family_then_globally():
    import suite_config

    config = {"budget": {"max_task_calls": 100, "max_optimizer_calls": 9, "families": {"gsm8k": {"max_task_calls": 200}},
                         "tasks": {"navigate": {"max_task_calls": 50}}}}
    assert suite_config.budget_for(config, "gsm8k") == {"max_task_calls": 200, "max_optimizer_calls": 9}
    assert suite_config.budget_for(config, "navigate") == {"max_task_calls": 50, "max_optimizer_calls": 9}
    assert suite_config.budget_for(config, "snarks") == {"max_task_calls": 100, "max_optimizer_calls": 9}


def test_shared_terms_and_budgets_reach_every_optimize_job(tmp_path):
    config = yaml.safe_load(BASE) | {
        "tasks": ["navigate", "gsm8k"], "optimizers": {"opro": {}, "greater": {}},
        "terms": {"initial_prompt": "Go.", "max_reasoning_tokens": 77, "n_dev": 5, "extractor_by_model": {"qwen2.5-coder-0.5b": "plain"}},
        "budget": {"max_task_calls": 100, "families": {"gsm8k": {"max_task_calls": 300}}},
        "optimizer_llm": {"model": "qwen2.5-coder-0.5b"}, "transfer_targets": ["qwen2.5-coder-0.5b"]}
    path = tmp_path / "terms.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _dry_run("--configfile", str(path), "--printshellcmds")
    assert result.returncode == 0, result.output[-2000:]
    commands = [line for line in result.output.splitlines() if "suite_cli optimize" in line]
    assert len(commands) == 4
    for command in commands:  # each job gets its slice of the validated config as one JSON argument
        job = json.loads(shlex.split(command.split(" --job ", 1)[1])[0])
        assert job["terms"]["initial_prompt"] == "Go." and job["terms"]["max_reasoning_tokens"] == 77
        assert job["terms"]["extractor"] == "dollar" and job["terms"]["extractor_by_model"] == {"qwen2.5-coder-0.5b": "plain"}
        assert job["budget"]["max_task_calls"] == (300 if " gsm8k " in command else 100)
        assert (job["optimizer_model"] == "qwen2.5-coder-0.5b") == (" opro " in command)
        assert ("--optimizer-model-record results/models/qwen2.5-coder-0.5b.json" in command) == (" opro " in command)
        assert job["runtime"] == {"dtype": "float32", "device": "cpu", "batch_size": 64}  # the schema's defaults
    evaluates = [line for line in result.output.splitlines() if "suite_cli evaluate" in line]
    assert len(evaluates) == 4
    for line in evaluates:  # each target model is evaluated with its own extractor variant
        job = json.loads(shlex.split(line.split(" --job ", 1)[1])[0])
        assert job["max_reasoning_tokens"] == 77
        assert job["extractor"] == ("plain" if " qwen2.5-coder-0.5b " in line else "dollar"), line
    assert re.search(r"prepare_model\s+2\b", result.output)  # the optimizer LLM is prepared too


def test_a_job_built_from_a_config_file_by_hand_equals_the_workflows(tmp_path):
    """One path from config to code: the human CLI's --configfile and the workflow build the same slice."""
    import suite_config

    config = yaml.safe_load(BASE) | {"budget": {"max_task_calls": 50}, "runtime": {"batch_size": 8}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    workflow = suite_config.validate_config(yaml.safe_load(path.read_text()))
    by_hand = suite_config.job_from_configfile(str(path), "navigate", ["smollm2-135m"], "zero_shot_cot")
    assert suite_config.optimize_job(by_hand, "navigate", "smollm2-135m", "zero_shot_cot") == \
        suite_config.optimize_job(workflow, "navigate", "smollm2-135m", "zero_shot_cot")
    assert suite_config.evaluate_job(by_hand, "navigate", "smollm2-135m") == \
        suite_config.evaluate_job(workflow, "navigate", "smollm2-135m")
    # without a file every setting is the schema's default
    bare = suite_config.job_from_configfile(None, "navigate", ["smollm2-135m"], "opro")
    assert suite_config.optimize_job(bare, "navigate", "smollm2-135m", "opro")["runtime"]["batch_size"] == 64


def test_an_external_method_needs_only_its_rules_file_and_a_config_entry(tmp_path):
    rules = tmp_path / "mine.smk"
    rules.write_text('rule mine:\n    output:\n        "results/prompts/{task}/{model}/mine/seed{seed}.json",\n'
                     '    shell:\n        "echo {config[external_methods][mine][greeting]} > {output}"\n')
    config = yaml.safe_load(BASE) | {"external_methods": {"mine": {"rules": str(rules), "greeting": "hi"}}}
    path = tmp_path / "external.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _dry_run("--configfile", str(path))
    assert result.returncode == 0, result.output[-2000:]
    assert re.search(r"\bmine\s+1\b", result.output)
    assert "results/eval/navigate/smollm2-135m/mine/seed0/smollm2-135m.json" in result.output


def test_every_seed_is_a_replicate_run_and_evaluated_under_its_own_path(tmp_path):
    config = yaml.safe_load(BASE) | {"seeds": [0, 7]}
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _dry_run("--configfile", str(path), "--printshellcmds")
    assert result.returncode == 0, result.output[-2000:]
    optimizes = [line for line in result.output.splitlines() if "suite_cli optimize" in line]
    assert sorted(re.search(r"--seed (\d+)", line).group(1) for line in optimizes) == sorted(
        ["0", "7"] * (len(optimizes) // 2))
    assert "results/prompts/navigate/smollm2-135m/zero_shot_cot/seed7.json" in result.output
    assert "results/eval/navigate/smollm2-135m/zero_shot_cot/seed7/smollm2-135m.json" in result.output


def test_the_old_single_seed_key_is_named(tmp_path):
    result = _bad_config(tmp_path, BASE + "seed: 3\n")
    assert result.returncode != 0
    assert "seed: replaced by seeds" in result.output and "seeds: [3]" in result.output


def test_a_given_config_is_not_merged_with_the_default(tmp_path):
    config = "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n"
    result = _bad_config(tmp_path, config)
    assert result.returncode == 0, result.output
    assert re.search(r"optimize\s+1\b", result.output) and "qwen" not in result.output


def test_endpoint_targets_are_evaluated_through_the_endpoint_backend(tmp_path):
    config = ("tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n"
              "endpoint_targets: {served-llama: {base_url: 'http://127.0.0.1:8000/v1', model: llama, "
              "api_key_env: MY_KEY, eos_string: '<|eot_id|>'}}\n")
    (tmp_path / "endpoint.yaml").write_text(config)
    result = _dry_run("--configfile", str(tmp_path / "endpoint.yaml"), "--printshellcmds")
    assert result.returncode == 0, result.output[-2000:]
    assert re.search(r"evaluate\s+2\b", result.output)  # the local model and the endpoint
    assert re.search(r"prepare_model\s+1\b", result.output)  # no local model for the endpoint label
    command = next(line for line in result.output.splitlines() if "evaluate navigate served-llama" in line)
    job = json.loads(shlex.split(command.split(" --job ", 1)[1])[0])
    assert job["endpoint"] == {"base_url": "http://127.0.0.1:8000/v1", "model": "llama", "api_key_env": "MY_KEY",
                               "eos_string": "<|eot_id|>", "timeout_s": 300}  # the schema's default timeout
    assert "--model-record" not in command  # no local weights behind an endpoint label


def test_endpoint_label_may_not_shadow_a_local_model(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n"
                                   "endpoint_targets: {smollm2-135m: {base_url: 'http://x/v1', model: m}}\n")
    assert result.returncode != 0 and "endpoint_targets.smollm2-135m: the label is also a local model" in result.output


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr


def test_paper_budgets_let_greater_make_the_reference_steps():
    """Every task's budget covers GReaTer's 125 steps, its rollouts and its final choice on dev."""
    import suite_config
    import tasks

    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    suite_config.validate_config(config)
    greater, terms = config["optimizers"]["greater"], config["terms"]
    assert greater["steps"] == 125 and terms["n_dev"] is None
    for task in config["tasks"]:
        n_dev = len(tasks.load_task_data(task).dev)
        needed = greater["n_train"] * (1 + greater["steps"] * greater["candidates_per_step"]) + (
            greater["final_candidates"] + 1) * n_dev
        assert needed <= suite_config.budget_for(config, task)["max_task_calls"], task
    for name, key in (("opro", "steps"), ("protegi", "rounds"), ("mapo", "rounds"), ("gpo", "epochs"),
                      ("ape", "resample_rounds")):
        assert config["optimizers"][name][key] >= 1000, f"{name}: the budget, not {key}, must end the run"


@pytest.mark.parametrize("config_file, steps", [("config/default.yaml", 12), ("config/paper.yaml", 125)])
def test_shipped_budgets_let_greater_make_its_steps(config_file, steps):
    """default.yaml: GReaTer can edit every token of its 7-token start (>= 12 steps); paper.yaml: the reference's 125."""
    import suite_config
    import tasks
    from optimizers.base import get_optimizer

    config = yaml.safe_load((ROOT / config_file).read_text())
    suite_config.validate_config(config)
    greater = get_optimizer("greater")(**config["optimizers"]["greater"])
    n_dev = config["terms"]["n_dev"]
    for task in config["tasks"]:
        dev = len(tasks.load_task_data(task).dev)
        budget = suite_config.budget_for(config, task)["max_task_calls"]
        assert greater.affordable_steps(budget, min(dev, n_dev or dev)) >= steps, (config_file, task)
