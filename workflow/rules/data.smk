rule write_splits:
    output:
        "results/splits/{task}.json",
    log:
        "logs/write_splits/{task}.log",
    benchmark:
        "logs/benchmark/write_splits/{task}.tsv"
    params:
        data_root=data_root_option(),
        download="" if config["allow_download"] else "--no-download",
    conda:
        "../envs/suite.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m suite_cli write-splits {wildcards.task} {output} {params.data_root} {params.download} > {log} 2>&1"
