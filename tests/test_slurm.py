"""The workflow through profiles/slurm on a real one-node Slurm, with the real executor plugin.

tests/slurm/start.sh starts munged, MariaDB, slurmdbd, slurmctld and slurmd under a temporary
folder (one node with this machine's CPUs and memory, two fake GPUs, partitions `cpu` and
`gpu`, accounting on). The profile is used as shipped, with only what a site changes adapted
to this machine (sizes, and conda off: nothing can be downloaded here). The test checks that
jobs went through sbatch with the resources the profile promises (read back with sacct), that
the light rules never became batch jobs, that an optimize job cancelled mid-run is resubmitted
and resumes from its checkpoint, and that the tables come out. Install Slurm with
`make slurm-install` (root: apt-get); without it the test is skipped, saying so.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
CHECKPOINT = Path("results/prompts/navigate/smollm2-135m/greater/seed0.json.checkpoint.json")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (slurmd and munged run as root)"
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing): run `make slurm-install` as root"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "the Slurm executor plugin is not installed (pip install -e '.[slurm]')"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(f"no Slurm on this machine: {reason}")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_TEST_GPUS="2")
    started = subprocess.run(["bash", str(ROOT / "tests/slurm/start.sh"), str(state)], env=env, capture_output=True,
                             text=True, timeout=300)
    if started.returncode != 0:
        subprocess.run(["bash", str(ROOT / "tests/slurm/stop.sh"), str(state)], capture_output=True, timeout=120)
        pytest.fail(f"the one-node Slurm did not start:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    yield dict(os.environ, SLURM_CONF=str(state / "etc" / "slurm.conf"))
    subprocess.run(["bash", str(ROOT / "tests/slurm/stop.sh"), str(state)], capture_output=True, timeout=120)


def _site_profile(tmp_path: Path) -> Path:
    """profiles/slurm as a site would adapt it to this 2-core machine: sizes and no conda; the keys,
    partitions, GPU requests, retries and status command stay as shipped."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile.pop("software-deployment-method")  # conda cannot download anything here
    profile["jobs"] = 2
    profile["latency-wait"] = 5
    profile["slurm-init-seconds-before-status-checks"] = 2  # poll soon: the jobs here take seconds
    profile["default-resources"].update(mem_mb=2000, cpus_per_task=1)
    for rule in ("optimize", "evaluate"):
        profile["set-resources"][rule].update(mem_mb=4000, cpus_per_task=1)
        profile["set-threads"][rule] = 1
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _config(tmp_path: Path) -> Path:
    config = {
        "tasks": ["navigate"], "models": ["smollm2-135m"], "cache_dir": str(tmp_path / ".cache"),
        # a budget for several GReaTer steps, so its job is still running when the test cancels it
        "terms": {"max_reasoning_tokens": 16, "n_dev": 4}, "budget": {"max_task_calls": 120},
        "optimizers": {"zero_shot_cot": {}, "greater": {"n_train": 4, "steps": 1000, "final_candidates": 1}},
        "runtime": {"threads": 1, "batch_size": 16}, "evaluation": {"limit": 2, "batch_size": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _slurm_time(minutes: int) -> str:
    """A time limit as sacct prints it: [D-]HH:MM:SS."""
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def _jobs(env: dict) -> list[dict]:
    """Every job of the run as accounting recorded it."""
    fields = ["JobID", "Partition", "AllocTRES", "ReqMem", "Timelimit", "State", "Comment"]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-a", "-S", "now-1hours", f"--format={','.join(fields)}%200"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _running_greater_job(env: dict) -> str | None:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], env=env, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        job, _, comment = line.partition("|")
        if comment.startswith("rule_optimize") and "greater" in comment:
            return job
    return None


def test_the_workflow_runs_on_slurm_through_the_profile(slurm, tmp_path):
    env = dict(slurm, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--profile", str(_site_profile(tmp_path)),
               "--configfile", str(_config(tmp_path))]
    log = open(tmp_path / "snakemake.log", "w")
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        # Cancel greater's batch job once it has checkpointed a step: the profile's retries resubmit it.
        deadline, cancelled = time.monotonic() + 900, None
        while cancelled is None:
            assert run.poll() is None, (tmp_path / "snakemake.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "greater wrote no checkpoint within 15 minutes"
            job = _running_greater_job(slurm)
            if job and (tmp_path / CHECKPOINT).exists():
                cancel = subprocess.run(["scancel", job], env=slurm, capture_output=True, text=True)
                assert cancel.returncode == 0, f"scancel {job}: {cancel.stderr}"
                cancelled = job
            time.sleep(0.5)
        assert run.wait(timeout=1200) == 0, (tmp_path / "snakemake.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        log.close()

    jobs = _jobs(slurm)
    rules = [job["Comment"].split("_wildcards_")[0] for job in jobs]
    # The light rules and the downloads ran on the submitting node (localrules), never as batch jobs.
    assert sorted(set(rules)) == ["rule_evaluate", "rule_optimize"], rules
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    for job in jobs:
        rule = job["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        promised = profile["set-resources"][rule]
        assert job["Partition"] == promised["slurm_partition"], job
        assert "gres/gpu=1" in job["AllocTRES"], job  # the `gpu` resource reached sbatch as --gpus
        assert job["ReqMem"].startswith("4000M"), job
        assert job["Timelimit"] == _slurm_time(promised["runtime"]), job
    states = {job["JobID"]: job["State"] for job in jobs}
    assert states[cancelled].startswith("CANCELLED"), states
    greater = [job for job in jobs if "greater" in job["Comment"]]
    assert len(greater) == 2 and greater[-1]["State"] == "COMPLETED", greater  # resubmitted, then done
    assert all(job["State"] == "COMPLETED" for job in jobs if job["JobID"] != cancelled), jobs

    greater_log = (tmp_path / "logs/optimize/navigate/smollm2-135m/greater/seed0.log").read_text()
    assert "[greater] resuming after step" in greater_log  # the retry went on from the checkpoint
    table = (tmp_path / "results/tables/main.csv").read_text()
    assert "zero_shot_cot" in table and "greater" in table
