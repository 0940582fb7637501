"""Tables (CSV, Markdown, LaTeX) and plots (PNG) from the evaluation and prompt files.

Tables:
- ``main``: method x (GSM8K, BBH average, FOLIO) per model, same-model cells (the paper's main table);
- ``per_task``: method x task per model, same-model cells;
- ``transfer``: method and source model x target model, averaged over tasks (the transfer table);
- ``budget``: per method and model, task calls spent as a share of the budget, the stop reasons,
  optimizer calls, tokens and seconds per run.
Plots: accuracy against task calls (from the trajectories, one line style per split the score
was measured on), a transfer heatmap, per-task bars.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks import get_task

TABLES = ("main", "per_task", "transfer", "budget")
_COLUMN_OF_FAMILY = {"gsm8k": "GSM8K", "bbh": "BBH average", "folio": "FOLIO"}


def load_evaluations(eval_files: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in eval_files:
        record = json.loads(Path(path).read_text())
        rows.append({"task": record["task"], "family": get_task(record["task"]).family,
                     "method": record["optimizer"], "source": record["source_model"], "target": record["target_model"],
                     "accuracy": record["accuracy"], "n": record["n"], "parse_rate": record["parse_rate"]})
    if not rows:
        raise ValueError("No evaluation files given")
    return pd.DataFrame(rows)


def load_prompts(prompt_files: list[str | Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in prompt_files]


def main_table(evals: pd.DataFrame) -> pd.DataFrame:
    same = evals[evals.source == evals.target]
    per_task = same.groupby(["source", "method", "family", "task"]).accuracy.mean().reset_index()
    per_family = per_task.groupby(["source", "method", "family"]).accuracy.mean().reset_index()
    per_family["column"] = per_family.family.map(_COLUMN_OF_FAMILY)
    table = per_family.pivot_table(index="method", columns=["source", "column"], values="accuracy")
    order = [c for c in _COLUMN_OF_FAMILY.values() if c in table.columns.get_level_values(1)]
    return (100 * table).reindex(columns=order, level=1).round(1)


def per_task_table(evals: pd.DataFrame) -> pd.DataFrame:
    same = evals[evals.source == evals.target]
    return (100 * same.pivot_table(index=["source", "method"], columns="task", values="accuracy")).round(1)


def transfer_table(evals: pd.DataFrame) -> pd.DataFrame:
    return (100 * evals.pivot_table(index=["method", "source"], columns="target", values="accuracy")).round(1)


def budget_table(prompts: list[dict]) -> pd.DataFrame:
    """Per method and model: what the runs spent, as a share of the budget, and why they stopped."""
    rows = []
    for record in prompts:
        budget = record["budget"]
        task_usage = budget.get("task_model", {})
        optimizer_usage = budget.get("optimizer_model", {})
        seconds = budget.get("seconds", {})
        cap = budget.get("max_task_calls")
        rows.append({
            "method": record["optimizer"], "model": record["model"],
            "task calls": budget["task_calls"], "budget": cap,
            "spent %": 100.0 * budget["task_calls"] / cap if cap else None,
            "optimizer calls": budget["optimizer_calls"],
            "stopped": record["stopped"]["reason"],
            "task-model tokens": task_usage.get("prompt_tokens", 0) + task_usage.get("completion_tokens", 0),
            "optimizer tokens": optimizer_usage.get("prompt_tokens", 0) + optimizer_usage.get("completion_tokens", 0),
            "forward/backward passes": budget.get("forward_passes", 0) + budget.get("backward_passes", 0),
            "seconds": seconds.get("total", 0.0),
        })
    frame = pd.DataFrame(rows)
    numeric = frame.groupby(["method", "model"]).mean(numeric_only=True)
    reasons = frame.groupby(["method", "model"])["stopped"].agg(lambda r: ", ".join(sorted(set(r))))
    return numeric.join(reasons).round(1)


#: line styles of the split a trajectory score was measured on
_SPLIT_STYLE = {"train": "-", "minibatch": "-.", "screen": ":", "dev": "--"}


def write_tables(evals: pd.DataFrame, prompts: list[dict], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {"main": main_table(evals), "per_task": per_task_table(evals), "transfer": transfer_table(evals),
              "budget": budget_table(prompts)}
    written = []
    for name, table in tables.items():
        flat = table.copy()
        if isinstance(flat.columns, pd.MultiIndex):
            flat.columns = [" / ".join(map(str, c)) for c in flat.columns]
        for ext, write in (("csv", lambda p: flat.to_csv(p)), ("md", lambda p: p.write_text(flat.to_markdown() + "\n")),
                           ("tex", lambda p: p.write_text(flat.to_latex(float_format="%.1f")))):
            path = out_dir / f"{name}.{ext}"
            write(path)
            written.append(path)
    return written


def write_plots(evals: pd.DataFrame, prompts: list[dict], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    task_names = sorted({r["task"] for r in prompts})
    columns = min(3, len(task_names))
    rows = -(-len(task_names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, task in zip(axes.flat, task_names):
        for record in (r for r in prompts if r["task"] == task):
            for split, style in _SPLIT_STYLE.items():  # one line per split: scores on different rows never mix
                points = [(s["task_calls"], 100 * s["score"]) for s in record["trajectory"]
                          if s["score"] is not None and s["split"] == split]
                if points:
                    axis.plot(*zip(*points), style, marker=".",
                              label=f"{record['optimizer']} ({record['model']}, {split})")
        axis.set_title(task)
        axis.set_xlabel("task calls spent")
        axis.set_ylabel("best accuracy so far (%)")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(task_names):]:
        axis.axis("off")
    figure.tight_layout()
    written.append(_save(figure, out_dir / "accuracy_vs_task_calls.png"))

    matrix = transfer_table(evals)
    figure, axis = plt.subplots(figsize=(2 + 1.6 * matrix.shape[1], 1 + 0.45 * matrix.shape[0]))
    image = axis.imshow(matrix.values, cmap="viridis", aspect="auto")
    axis.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right")
    axis.set_yticks(range(matrix.shape[0]), [f"{m} ({s})" for m, s in matrix.index])
    for (i, j), value in pd.DataFrame(matrix.values).stack().items():
        axis.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
    axis.set_xlabel("target model")
    figure.colorbar(image, label="test accuracy (%)")
    figure.tight_layout()
    written.append(_save(figure, out_dir / "transfer_heatmap.png"))

    per_task = per_task_table(evals)
    sources = sorted({s for s, _ in per_task.index})
    figure, axes = plt.subplots(len(sources), 1, figsize=(max(6, 1.4 * per_task.shape[1] + 3), 3.4 * len(sources)),
                                squeeze=False)
    for axis, source in zip(axes.flat, sources):
        per_task.loc[source].T.plot.bar(ax=axis, rot=20)
        axis.set_title(f"test accuracy on {source} (same-model prompts)")
        axis.set_ylabel("accuracy (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    written.append(_save(figure, out_dir / "per_task_bars.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def build_report(eval_files, prompt_files, tables_dir, plots_dir) -> list[Path]:
    evals, prompts = load_evaluations(eval_files), load_prompts(prompt_files)
    return write_tables(evals, prompts, tables_dir) + write_plots(evals, prompts, plots_dir)
