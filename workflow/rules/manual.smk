# The example external method `manual`: hand-written prompts (task name or `default` ->
# text) turned into the prompt contract, so they appear in every table. Declared in a
# config as `external_methods: {manual: {rules: workflow/rules/manual.smk, prompts: FILE}}`.
localrules:
    manual_prompts,


rule manual_prompts:
    input:
        prompts=config["external_methods"]["manual"]["prompts"],
        split="results/splits/{task}.json",
    output:
        "results/prompts/{task}/{model}/manual/seed{seed}.json",
    log:
        "logs/manual_prompts/{task}/{model}/seed{seed}.log",
    benchmark:
        "logs/benchmark/manual_prompts/{task}/{model}/seed{seed}.tsv"
    params:
        max_prompt_chars=config["terms"]["max_prompt_chars"],
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/suite.yaml"
    shell:
        "python -m suite_cli manual-prompt {wildcards.task} {wildcards.model} {input.prompts} "
        "--seed {wildcards.seed} --max-prompt-chars {params.max_prompt_chars} --output {output} > {log} 2>&1"
