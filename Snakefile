# Prompt-optimizer benchmark suite: data splits and models -> optimize (task x model x
# optimizer) -> evaluate with lm-eval (same-model and transfer cells) -> tables, plots, report.
from snakemake.utils import min_version

min_version("9.0")


# The default config applies only when none is given: a given config is never merged
# with it, so a config lists exactly what runs.
if not config:

    configfile: "config/default.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Light rules, and the ones that need the network (data and model downloads), run where
# Snakemake runs (on a cluster: the submitting node), never as queued batch jobs.
localrules:
    all,
    write_splits,
    prepare_model,
    report,


include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/optimize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# External methods bring their own rules file (config key external_methods).
for method in EXTERNAL_METHODS.values():

    include: method["rules"]


rule all:
    default_target: True
    input:
        get_final_output(),


# A failed job must not cost the whole report: once the other jobs are done (run with
# --keep-going), the tables and plots are built from the evaluation files that exist, and
# the missing ones are listed in results/tables/missing.md.
onerror:
    shell(
        "mkdir -p logs/report && python -m suite_cli report --allow-missing --eval-files {files} "
        "--prompt-files {prompts} > logs/report/partial.log 2>&1 "
        "&& echo 'partial report: results/tables (missing cells in results/tables/missing.md)' "
        "|| echo 'no partial report (see logs/report/partial.log)'".format(
            files=" ".join(get_eval_files()),
            prompts=" ".join(expand(PROMPT_FILE, task=TASKS, source=MODELS, method=METHODS, seed=SEEDS)),
        )
    )
