# Tables, plots and the sample browser from the evaluation files. When a job fails, the
# workflow's onerror handler (Snakefile) builds the same report from the files that exist.
rule report:
    input:
        evaluations=get_eval_files(),
        prompts=expand(PROMPT_FILE, task=TASKS, source=MODELS, method=METHODS, seed=SEEDS),
    output:
        tables=expand("results/tables/{table}.{ext}", table=REPORT_TABLES, ext=["csv", "md", "tex"]),
        pages=[
            report(f"results/tables/{table}.html", caption="../report/tables.rst", category="Tables",
                   labels={"table": table})
            for table in REPORT_TABLES
        ],
        plots=[
            report(f"results/plots/{plot}.png", caption=f"../report/{plot}.rst", category="Plots",
                   labels={"plot": plot})
            for plot in REPORT_PLOTS
        ],
        samples=[
            report(f"results/pages/samples_{task}.html", caption="../report/samples.rst", category="Test rows",
                   labels={"task": task})
            for task in TASKS
        ],
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
        "--tables-dir results/tables --plots-dir results/plots --pages-dir results/pages > {log} 2>&1"
