# Prompt-optimizer benchmark suite. Stages: data splits and models (here), then
# optimize, evaluate and report (rules added alongside in workflow/rules/).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
