rule report:
    input:
        evaluations=get_eval_files(),
        prompts=expand(
            "results/prompts/{task}/{source}/{method}.json", task=TASKS, source=MODELS, method=METHODS
        ),
    output:
        tables=expand("results/tables/{table}.{ext}", table=REPORT_TABLES, ext=["csv", "md", "tex"]),
        main=report("results/plots/accuracy_vs_task_calls.png", caption="../report/accuracy_vs_task_calls.rst", category="Plots"),
        heatmap=report("results/plots/transfer_heatmap.png", caption="../report/transfer_heatmap.rst", category="Plots"),
        bars=report("results/plots/per_task_bars.png", caption="../report/per_task_bars.rst", category="Plots"),
    log:
        "logs/report/report.log",
    benchmark:
        "logs/benchmark/report/report.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/suite.yaml"
    shell:
        "python -m suite_cli report --eval-files {input.evaluations} --prompt-files {input.prompts} "
        "--tables-dir results/tables --plots-dir results/plots > {log} 2>&1"
