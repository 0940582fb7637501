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


def _optimize(tmp_path: Path, optimizer: str, options: dict) -> subprocess.Popen:
    output = tmp_path / f"{optimizer}.json"
    config = tmp_path / f"{optimizer}.yaml"
    config.write_text(yaml.safe_dump({
        "optimizers": {optimizer: options}, "terms": {"max_reasoning_tokens": 16, "n_dev": 4},
        "budget": {"max_task_calls": 40}, "cache_dir": str(tmp_path / "cache"), "runtime": {"batch_size": 8}}))
    return subprocess.Popen(
        [sys.executable, "-m", "suite_cli", "optimize", "navigate", "smollm2-135m", optimizer, "--output", str(output),
         "--configfile", str(config), "--split-file", str(tmp_path / "split.json"), "--threads", "1"],
        cwd=ROOT, env=OFFLINE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL on a shared file system
        return connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0]


def test_two_optimize_jobs_on_one_cache_folder_keep_their_generations_apart_and_intact(tmp_path):
    subprocess.run([sys.executable, "-m", "suite_cli", "write-splits", "navigate", str(tmp_path / "split.json")],
                   cwd=ROOT, env=OFFLINE, check=True, capture_output=True)
    jobs = {"opro": {"steps": 1, "samples_per_step": 2, "n_train": 4, "final_candidates": 1, "max_tokens": 24},
            "ape": {"proposal_requests": 1, "proposals_per_request": 2, "screen_examples": 2, "rescore_top": 1,
                    "max_tokens": 24}}
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


def _hub_snapshot(cache: Path, repo: str, commit: str) -> Path:
    """A tiny random llama laid out as the Hugging Face cache lays out a downloaded snapshot."""
    from tests.conftest import build_tiny_llama, build_tiny_tokenizer

    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    tokenizer = build_tiny_tokenizer()
    build_tiny_llama(tokenizer).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_a_model_the_config_adds_is_prepared_from_the_hub_cache_offline_and_jobs_load_its_record(tmp_path):
    """hub_models: the prepare step (hub offline) finds the snapshot in cache_dir/hub, records the commit,
    and a job rebuilds the model from that record alone, without the config's registry."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _hub_snapshot(tmp_path / "cache" / "hub", "test-org/tiny-chat", commit)
    spec = '{"hf_id": "test-org/tiny-chat", "revision": null, "chat": true, "dtype": "bfloat16"}'
    record_path = tmp_path / "tiny.json"
    result = subprocess.run([sys.executable, "-m", "suite_cli", "prepare-model", "tiny", "--spec", spec,
                             "--cache-dir", str(tmp_path / "cache"), "--output", str(record_path)],
                            cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = yaml.safe_load(record_path.read_text())
    assert record["path"] == str(snapshot) and record["revision"] == commit
    assert record["checksum"] == f"hub:test-org/tiny-chat@{commit}"
    assert record["spec"] == {"name": "tiny", "hf_id": "test-org/tiny-chat", "chat": True, "revision": None,
                              "dtype": "bfloat16"}

    from suite_cli import _load_job_model

    model = _load_job_model("tiny", str(record_path), {"dtype": "float32", "device": "cpu"})
    assert model.spec.name == "tiny" and model.dtype == "bfloat16"  # the model's own dtype wins
    assert model.prepared.revision == commit
    from model_engine.backend import GenerationParams

    assert len(model.complete(["Hello"], GenerationParams(max_new_tokens=2))) == 1  # it loads and generates

    # A commit the cache lacks is refused offline, naming both caches and the way out.
    pinned = '{"hf_id": "test-org/tiny-chat", "revision": "fedcba9876543210fedcba9876543210fedcba98"}'
    result = subprocess.run([sys.executable, "-m", "suite_cli", "prepare-model", "tiny2", "--spec", pinned,
                             "--cache-dir", str(tmp_path / "cache")],
                            cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "test-org/tiny-chat@fedcba98" in result.stderr and str(tmp_path / "cache" / "hub") in result.stderr


def test_hub_models_from_the_config_reach_the_prepare_job_and_every_job_loads_the_record(tmp_path):
    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "transfer_targets": ["my-model"],
              "hub_models": {"my-model": {"hf_id": "org/my-model", "revision": "abc123", "chat": False}},
              "optimizers": {"zero_shot_cot": {}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([SNAKEMAKE, "-n", "-p", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                             "--configfile", str(path)], env=OFFLINE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    prepare = [line for line in result.stdout.splitlines() if "prepare-model my-model" in line]
    assert len(prepare) == 1 and '"hf_id": "org/my-model"' in prepare[0] and '"revision": "abc123"' in prepare[0]
    evaluate = [line for line in result.stdout.splitlines() if "suite_cli evaluate navigate my-model" in line]
    assert len(evaluate) == 1 and "--model-record results/models/my-model.json" in evaluate[0]
    assert "HF_HUB_OFFLINE=1 python -m suite_cli evaluate" in evaluate[0]  # jobs never reach for the hub


def test_a_hub_model_may_not_reuse_a_registered_name(tmp_path):
    import suite_config
    from suite_errors import SuiteError

    config = {"tasks": ["navigate"], "models": ["smollm2-135m"], "optimizers": {"zero_shot_cot": {}},
              "hub_models": {"smollm2-135m": {"hf_id": "someone/else"}}}
    try:
        suite_config.validate_config(config)
    except SuiteError as error:
        assert "hub_models.smollm2-135m: the name is a registered model" in str(error)
    else:
        raise AssertionError("a clashing hub model name was accepted")


def test_vllm_options_reach_lm_eval_and_may_not_override_the_weights():
    import pytest

    from evaluation.run import vllm_arguments
    from suite_errors import SuiteError

    arguments = vllm_arguments("/models/x", "bfloat16", {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                                                          "max_model_len": None, "enable_prefix_caching": True})
    assert arguments == {"pretrained": "/models/x", "dtype": "bfloat16", "batch_size": "auto",
                         "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "enable_prefix_caching": True}
    with pytest.raises(SuiteError, match="evaluation.vllm: pretrained cannot be set here"):
        vllm_arguments("/models/x", "bfloat16", {"pretrained": "/elsewhere"})


def test_the_paper_config_runs_the_papers_setting():
    """config/paper.yaml against greater_spec.md: models, initial prompt, reasoning limit, GReaTer's schedule,
    and budgets that let GReaTer make all its steps on every task family."""
    import suite_config

    config = suite_config.validate_config(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    assert config["models"] == ["llama-3-8b-instruct", "gemma-2-9b-it"]
    assert config["terms"]["initial_prompt"] == ("Use proper logical reasoning and think step by step. "
                                                 "Finally give the actual correct answer.")
    assert config["terms"]["max_reasoning_tokens"] == 1024
    greater = config["optimizers"]["greater"]
    assert {key: greater[key] for key in ("n_train", "steps", "topk", "candidates_per_step", "perplexity_weight",
                                          "final_candidates")} == {"n_train": 50, "steps": 125, "topk": 40,
                                                                   "candidates_per_step": 3, "perplexity_weight": 0.2,
                                                                   "final_candidates": 10}
    assert len(config["tasks"]) == 23 and {"gsm8k", "folio"} <= set(config["tasks"])
    assert set(config["optimizers"]) == {"zero_shot_cot", "greater", "ape", "opro", "protegi", "gpo", "mapo"}
    # every step rolls out the current prompt and each candidate on the training rows; the final choice
    # scores the final candidates and the initial prompt on (at most 100) dev rows
    greater_needs = greater["steps"] * (greater["candidates_per_step"] + 1) * greater["n_train"] \
        + (greater["final_candidates"] + 1) * 100
    for task in config["tasks"]:
        assert suite_config.budget_for(config, task)["max_task_calls"] >= greater_needs, task
    assert config["seeds"] == [0, 1, 2]
    assert config["runtime"]["device"] == "cuda" and config["runtime"]["dtype"] == "bfloat16"
    assert config["evaluation"]["backend"] == "vllm" and config["evaluation"]["vllm"]["tensor_parallel_size"] == 1


def test_the_slurm_profile_asks_for_gpus_the_way_the_executor_plugin_reads_them():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    for rule in ("optimize", "evaluate"):
        resources = profile["set-resources"][rule]
        assert resources["gpu"] == 1 and "gpus" not in resources  # the plugin reads `gpu`, not `gpus`
        assert "slurm_extra" not in resources  # the plugin refuses --gres there
        assert profile["set-threads"][rule] == resources["cpus_per_task"]
    assert "slurm_account" not in profile["default-resources"]  # the plugin guesses it unless the user sets it
    assert not set(profile["set-resources"]) & {"prepare_model", "write_splits", "report"}  # local rules
    snakefile = (ROOT / "Snakefile").read_text()
    local = snakefile[snakefile.index("localrules:"):].split("\n\n")[0]
    assert all(rule in local for rule in ("write_splits", "prepare_model", "report"))
