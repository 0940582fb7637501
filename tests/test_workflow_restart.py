"""Killing Snakemake mid-run (SIGKILL to it and its jobs) and starting it again.

Completed jobs are not redone (their outputs keep their modification times), the
interrupted optimize job resumes from its checkpoint, and the DAG finishes.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CHECKPOINT = Path("results/prompts/navigate/smollm2-135m/greater/seed0.json.checkpoint.json")


def _config(tmp_path: Path) -> Path:
    config = {
        "tasks": ["navigate"],
        "models": ["smollm2-135m"],
        "cache_dir": str(tmp_path / ".cache"),
        "terms": {"max_reasoning_tokens": 16, "n_dev": 4},
        "budget": {"max_task_calls": 72},
        "optimizers": {
            "zero_shot_cot": {},
            "greater": {"n_train": 4, "steps": 1000, "final_candidates": 1},
        },
        "external_methods": {"manual": {"rules": "workflow/rules/manual.smk",
                                        "prompts": str(ROOT / "config" / "prompts" / "manual.yaml")}},
        "runtime": {"threads": 2, "batch_size": 16},
        "evaluation": {"limit": 2, "batch_size": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.dump(config))
    return path


def _snakemake(tmp_path: Path, *args: str) -> list[str]:
    # Run from the results folder; the workflow profile (profiles/default) is found next to the Snakefile.
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--cores", "2", "--configfile", str(_config(tmp_path)), *args]


def _finished_outputs(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*.json")
            if not p.name.endswith(".checkpoint.json")}


def test_killed_workflow_restarts_without_redoing_finished_jobs(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_snakemake(tmp_path), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    while not (tmp_path / CHECKPOINT).exists():  # greater has finished at least one step
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "greater wrote no checkpoint within 10 minutes"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # Snakemake and every job it started, with no chance to clean up
    first.wait(timeout=30)
    log.close()
    finished = _finished_outputs(tmp_path)
    assert "results/splits/navigate.json" in finished and "results/models/smollm2-135m.json" in finished
    assert not (tmp_path / "results/prompts/navigate/smollm2-135m/greater/seed0.json").exists()

    # A SIGKILLed Snakemake leaves its lock behind; --unlock releases it (README: "Interrupted runs").
    subprocess.run(_snakemake(tmp_path, "--unlock"), cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    second = subprocess.run(_snakemake(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]

    after = _finished_outputs(tmp_path)
    assert {path: after[path] for path in finished} == finished, "a finished job was redone"
    greater_log = (tmp_path / "logs/optimize/navigate/smollm2-135m/greater/seed0.log").read_text()
    assert "[greater] resuming after step" in greater_log
    assert not (tmp_path / CHECKPOINT).exists()  # removed once the result is written
    table = (tmp_path / "results/tables/main.csv").read_text()
    for method in ("zero_shot_cot", "greater", "manual"):
        assert method in table
