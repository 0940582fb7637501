"""The Snakemake workflow: every config plans, bad configs fail before the DAG is built."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert re.search(r"optimize\s+276\b", result.output)  # 23 tasks x 2 models x 6 methods
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
    assert result.returncode != 0 and "Unknown option(s) stepz for opro" in result.output


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
    for part in ("--backend endpoint", "--endpoint http://127.0.0.1:8000/v1", "--endpoint-model llama",
                 "--endpoint-api-key-env MY_KEY", "--endpoint-eos-string '<|eot_id|>'"):
        assert part in command


def test_endpoint_label_may_not_shadow_a_local_model(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [smollm2-135m]\noptimizers: {zero_shot_cot: {}}\n"
                                   "endpoint_targets: {smollm2-135m: {base_url: 'http://x/v1', model: m}}\n")
    assert result.returncode != 0 and "label 'smollm2-135m' is also a local model" in result.output


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr
