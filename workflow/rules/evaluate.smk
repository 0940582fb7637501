# One job per (task, target model): every prompt of the task, same-model and transfer
# cells alike, through lm-eval with the target loaded once.
rule evaluate:
    input:
        prompts=get_prompt_files,
        split="results/splits/{task}.json",
        model=target_model_record,
    output:
        expand(
            "results/eval/{{task}}/{source}/{method}/seed{seed}/{{target}}.json",
            source=MODELS,
            method=METHODS,
            seed=SEEDS,
        ),
    log:
        "logs/evaluate/{task}/{target}.log",
    benchmark:
        "logs/benchmark/evaluate/{task}/{target}.tsv"
    params:
        job=evaluate_job,
        model_record=target_record_option,
    threads: RUNTIME["threads"]
    resources:
        mem_mb=12000,
        runtime=600,
    conda:
        "../envs/vllm.yaml" if config["evaluation"]["backend"] == "vllm" else "../envs/suite.yaml"
    shell:
        "HF_HUB_OFFLINE=1 python -m suite_cli evaluate {wildcards.task} {wildcards.target} --prompt-files {input.prompts} "
        "--split-file {input.split} --output-dir results/eval --outputs {output} {params.model_record} --threads {threads} "
        "--job {params.job} > {log} 2>&1"
