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
        job=optimize_job,
        optimizer_model_record=optimizer_model_record,
    threads: RUNTIME["threads"]
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        "../envs/suite.yaml"
    shell:
        "HF_HUB_OFFLINE=1 python -m suite_cli optimize {wildcards.task} {wildcards.model} {wildcards.optimizer} "
        "--seed {wildcards.seed} --output {output} --split-file {input.split} --model-record {input.model} "
        "{params.optimizer_model_record} --threads {threads} --job {params.job} > {log} 2>&1"
