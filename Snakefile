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
