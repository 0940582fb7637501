"""What a cluster run relies on, short of a real Slurm (see test_slurm.py for that):
caches safe when jobs share a folder, planning without the ML stack, the profile's keys,
and the paper config's settings."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
OFFLINE = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def _optimize(tmp_path: Path, optimizer: str, options: str) -> subprocess.Popen:
    output = tmp_path / f"{optimizer}.json"
    return subprocess.Popen(
        [sys.executable, "-m", "suite_cli", "optimize", "navigate", "smollm2-135m", optimizer, "--output", str(output),
         "--options", options, "--terms", '{"max_reasoning_tokens": 16, "n_dev": 4}', "--max-task-calls", "40",
         "--split-file", str(tmp_path / "split.json"), "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
         "--batch-size", "8"],
        cwd=ROOT, env=OFFLINE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL on a shared file system
        return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]


def test_two_optimize_jobs_on_one_cache_folder_keep_their_generations_apart_and_intact(tmp_path):
    subprocess.run([sys.executable, "-m", "suite_cli", "write-splits", "navigate", str(tmp_path / "split.json")],
                   cwd=ROOT, env=OFFLINE, check=True, capture_output=True)
    jobs = {"opro": '{"steps": 1, "samples_per_step": 2, "n_train": 4, "final_candidates": 1, "max_tokens": 24}',
            "ape": '{"proposal_requests": 1, "proposals_per_request": 2, "screen_examples": 2, "rescore_top": 1, '
                   '"max_tokens": 24}'}
    running = {name: _optimize(tmp_path, name, options) for name, options in jobs.items()}  # at the same time
    for name, process in running.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    caches = {name: tmp_path / "cache" / "generations" / "navigate" / "smollm2-135m" / f"{name}-seed0.sqlite"
              for name in jobs}
    counts = {name: _rows(path) for name, path in caches.items()}
    assert all(count > 0 for count in counts.values()), counts
    assert not (tmp_path / "cache" / "generations.sqlite").exists()
    first = yaml.safe_load((tmp_path / "opro.json").read_text())["prompt"]
    # A retried job (same task, model, method, seed) finds every generation it made: same prompt, nothing new.
    (tmp_path / "opro.json").unlink()
    again = _optimize(tmp_path, "opro", jobs["opro"])
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output[-3000:]
    assert yaml.safe_load((tmp_path / "opro.json").read_text())["prompt"] == first
    assert _rows(caches["opro"]) == counts["opro"]


def test_the_paper_config_plans_without_torch(tmp_path):
    """A login node needs Snakemake and the suite's light modules only: torch, transformers, lm-eval,
    datasets and vLLM are made unimportable, and the dry run of the whole paper grid still works."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers', 'lm_eval', 'datasets', 'vllm', 'accelerate'}:\n"
        "            raise ImportError(f'{name} is blocked: planning must not import it')\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = dict(OFFLINE, PYTHONPATH=str(blocker))
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "blocked" in check.stderr  # the blocker works
    result = subprocess.run([SNAKEMAKE, "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--configfile", str(ROOT / "config" / "paper.yaml"), "--quiet", "rules"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "optimize" in result.stdout and "evaluate" in result.stdout
