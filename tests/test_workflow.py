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
    assert "write_splits" in result.output and "prepare_model" in result.output


def test_paper_config_plans_the_whole_grid():
    result = _dry_run("--configfile", "config/paper.yaml")
    assert result.returncode == 0
    assert re.search(r"write_splits\s+23\b", result.output), result.output  # 21 BBH tasks + GSM8K + FOLIO


def _bad_config(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return _dry_run("--configfile", str(path))


def test_unknown_task_in_config_is_named_with_suggestion(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigat]\nmodels: [smollm2-135m]\n")
    assert result.returncode != 0
    assert "Unknown task 'navigat'" in result.output and "Did you mean 'navigate'" in result.output


def test_unknown_model_in_config_is_named(tmp_path):
    result = _bad_config(tmp_path, "tasks: [navigate]\nmodels: [gpt-5]\n")
    assert result.returncode != 0 and "Unknown model 'gpt-5'" in result.output


def test_type_error_names_the_key(tmp_path):
    result = _bad_config(tmp_path, "tasks: navigate\nmodels: [smollm2-135m]\n")
    assert result.returncode != 0
    assert "tasks" in result.output and "is not of type 'array'" in result.output
