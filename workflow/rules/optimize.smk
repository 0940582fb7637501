rule optimize:
    input:
        unpack(optimize_inputs),
    output:
        "results/prompts/{task}/{model}/{optimizer}/seed{seed}.json",
    log:
        "logs/optimize/{task}/{model}/{optimizer}/seed{seed}.log",
    benchmark:
        "logs/benchmark/optimize/{task}/{model}/{optimizer}/seed{seed}.tsv"
    params:
        arguments=optimize_arguments,
    threads: RUNTIME["threads"]
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        "../envs/suite.yaml"
    shell:
        "HF_HUB_OFFLINE=1 python -m suite_cli optimize {wildcards.task} {wildcards.model} {wildcards.optimizer} "
        "--output {output} --split-file {input.split} --threads {threads} {params.arguments} > {log} 2>&1"
