# A local rule (Snakefile: localrules): it runs where Snakemake runs, which on a cluster is
# the node with network access. It downloads (or converts) each model once into cache_dir,
# and its record pins what every job then loads with the hub offline.
rule prepare_model:
    output:
        "results/models/{model}.json",
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "logs/benchmark/prepare_model/{model}.tsv"
    params:
        arguments=prepare_arguments,
    conda:
        "../envs/suite.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m suite_cli prepare-model {wildcards.model} {params.arguments} --output {output} > {log} 2>&1"
