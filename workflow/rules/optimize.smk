rule optimize:
    input:
        split="results/splits/{task}.json",
        model="results/models/{model}.json",
    output:
        "results/prompts/{task}/{model}/{optimizer}.json",
    log:
        "logs/optimize/{task}/{model}/{optimizer}.log",
    benchmark:
        "logs/benchmark/optimize/{task}/{model}/{optimizer}.tsv"
    params:
        arguments=optimize_arguments,
    threads: RUNTIME["threads"]
    resources:
        mem_mb=8000,
        runtime=600,
    conda:
        "../envs/suite.yaml"
    shell:
        "python -m suite_cli optimize {wildcards.task} {wildcards.model} {wildcards.optimizer} "
        "--output {output} --split-file {input.split} {params.arguments} > {log} 2>&1"


rule manual_prompts:
    input:
        prompts=config["manual"]["prompts"] if config.get("manual") else [],
        split="results/splits/{task}.json",
    output:
        "results/prompts/{task}/{model}/manual.json",
    log:
        "logs/manual_prompts/{task}/{model}.log",
    benchmark:
        "logs/benchmark/manual_prompts/{task}/{model}.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/suite.yaml"
    shell:
        "python -m suite_cli manual-prompt {wildcards.task} {wildcards.model} {input.prompts} "
        "--output {output} > {log} 2>&1"
