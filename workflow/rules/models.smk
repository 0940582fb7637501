rule prepare_model:
    output:
        "results/models/{model}.json",
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "logs/benchmark/prepare_model/{model}.tsv"
    params:
        cache_dir=config["cache_dir"],
    conda:
        "../envs/suite.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m suite_cli prepare-model {wildcards.model} --cache-dir {params.cache_dir} --output {output} > {log} 2>&1"
