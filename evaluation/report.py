"""Tables, plots and HTML pages from the evaluation and prompt files, with intervals and paired differences.

Every number comes from the per-row verdicts of the ``.samples.jsonl`` files, so each cell
carries its interval and each method its paired difference from zero-shot CoT on the same
test rows (``evaluation.stats``). Tables (CSV with every number, Markdown, LaTeX and HTML
with the formatted cells):

- ``main``: method x (GSM8K, BBH average, FOLIO) per task model, same-model cells (the paper's main table);
- ``main_vs_cot``: the same cells as differences from zero-shot CoT;
- ``per_task`` and ``per_task_vs_cot``: method x task per task model, same-model cells;
- ``transfer`` and ``transfer_vs_cot``: method and source model x target model (the average over tasks),
  the latter as differences from the target's own zero-shot CoT;
- ``above_majority``: zero-shot CoT per target model and task against always giving the test rows' most
  common gold answer, paired (is the model above chance at all?);
- ``scores``: the headline answer beside the strict and lenient written answers (accuracy, parse rate);
- ``budget``: per method and model, the share of the budget spent, the stop reasons, calls, tokens, seconds;
- ``prompts``: the chosen prompt of every method x task x model x seed;
- ``missing``: expected evaluation files that are not there (partial results).

Plots: accuracy against task calls during optimization; the difference from zero-shot CoT
per task (diverging colours, intervals); transfer accuracy and transfer differences; per-task
accuracy with intervals; test accuracy against task calls and task-model tokens (Pareto).
A sample browser shows a few test rows of every cell.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation import stats
from suite_errors import SuiteError
from tasks import get_task

log = logging.getLogger(__name__)

BASELINE = "zero_shot_cot"
TABLES = ("main", "main_vs_cot", "per_task", "per_task_vs_cot", "transfer", "transfer_vs_cot", "above_majority",
          "scores", "published", "budget", "prompts", "missing")
PUBLISHED = Path(__file__).parent / "published" / "greater_paper.yaml"
PLOTS = ("accuracy_vs_task_calls", "vs_cot_per_task", "transfer_heatmap", "transfer_vs_cot", "per_task_accuracy",
         "pareto")
_COLUMN_OF_FAMILY = {"gsm8k": "GSM8K", "bbh": "BBH average", "folio": "FOLIO"}
_MARK = "*"
_CAPTIONS = {
    "main": "Test accuracy (%) of same-model cells (the prompt optimized and tested on the same model); family "
            "columns average the tasks with equal weight. In brackets: the {interval}.",
    "main_vs_cot": "Difference from zero-shot CoT in test accuracy (points), paired on the same test rows. In "
                   "brackets: the {interval}. {mark} marks a difference whose interval excludes 0 (one-task cells "
                   "with one seed: McNemar's exact test, p < 0.05).",
    "per_task": "Test accuracy (%) per task of same-model cells. In brackets: the {interval}.",
    "per_task_vs_cot": "Difference from zero-shot CoT per task (points), paired on the same test rows. In brackets: "
                       "the {interval}. {mark}: McNemar's exact test p < 0.05 (one seed), else the interval excludes 0.",
    "transfer": "Test accuracy (%) of prompts optimized on the source model (rows) and tested on the target model "
                "(columns), the equal-weight average over tasks. In brackets: the {interval}.",
    "transfer_vs_cot": "Transfer as the difference from the target model's own zero-shot CoT (points), paired on "
                       "the same test rows. In brackets: the {interval}. {mark}: the interval excludes 0.",
    "above_majority": "Zero-shot CoT on each target model against the majority answer (always giving the most "
                      "common gold answer of the same test rows), per task: a prompt optimizer can only be judged "
                      "on a model that answers above this line. 'CoT - majority' is paired on the test rows (points). "
                      "In brackets: the {interval}. {mark}: McNemar's exact test p < 0.05 (one seed), else the "
                      "interval excludes 0.",
    "scores": "Three readings of the same answers (%): the headline (closed answer sets: the valid answer the model "
              "finds most likely after the extractor; otherwise the lenient written answer), the strict written "
              "answer (it must open the text after the extractor) and the lenient one (the parser may fall back "
              "to the reasoning), each with its parse rate; and the share of reasoning cut by the token limit.",
    "published": "Our cells beside the GReaTer paper's published numbers where the config runs the same models, "
                 "method and tasks: self-optimization per task family (source = target; the paper's BBH average is "
                 "over 21 tasks, ours over 'our tasks') and transfer per task and over the paper's five transfer "
                 "tasks; 'ours - published' in points. In brackets: the {interval}.",
    "budget": "What each optimization run spent, averaged over tasks and seeds: task calls as a share of the "
              "budget, the stop reasons, optimizer calls, tokens and seconds.",
    "prompts": "The prompt each method chose, per task, task model and seed, with its dev accuracy (%) and the "
               "initial prompt's on the same dev rows: the final choice, where a tie goes to the method's "
               "better-ranked prompt.",
    "missing": "Expected evaluation files that do not exist (a failed or unfinished job): their cells are left "
               "out of every table above.",
}


@dataclass
class Results:
    """Evaluation cells (one row per file) and their per-row verdicts."""

    cells: pd.DataFrame
    #: (task, method, source, target) -> seeds x test-row ids, 1 where the headline answer is right
    verdicts: dict[tuple, pd.DataFrame]
    samples: dict[tuple, list[dict]]  # (task, method, source, target, seed) -> the samples file's rows
    missing: list[str] = field(default_factory=list)


def load_results(eval_files, allow_missing: bool = False) -> Results:
    """Read evaluation files and their samples; with ``allow_missing``, absent files are listed, not fatal."""
    rows, verdict_rows, samples, missing = [], [], {}, []
    for path in map(Path, eval_files):
        if not path.exists() and allow_missing:
            missing.append(str(path))
            continue
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise SuiteError(f"Evaluation file {path} is not an evaluation record (a JSON object)")
            samples_path = path.parent / record["samples_file"]
            lines = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
            key = (record["task"], record["optimizer"], record["source_model"], record["target_model"])
            seed = record.get("seed", 0)
            samples[(*key, seed)] = lines
            rows.append({"task": record["task"], "family": get_task(record["task"]).family, "method": record["optimizer"],
                         "source": record["source_model"], "target": record["target_model"], "seed": seed,
                         "prompt": record["prompt"], "n": record["n"], "accuracy": record["accuracy"],
                         "answer_step": record.get("answer_step", "generated"),
                         "strict_accuracy": record.get("strict_accuracy"),
                         "strict_parse_rate": record.get("strict_parse_rate"),
                         "lenient_accuracy": record.get("lenient_accuracy"),
                         "lenient_parse_rate": record.get("lenient_parse_rate"), "truncated": record.get("truncated")})
            verdict_rows += [(*key, seed, s["id"], float(s["correct"])) for s in lines]
        except SuiteError:  # an unknown task name is one (and a KeyError too)
            raise
        except KeyError as error:
            raise SuiteError(f"Evaluation file {path} or its samples lack the field {error}") from None
        except (OSError, json.JSONDecodeError) as error:
            raise SuiteError(f"Cannot read evaluation file {path} or its samples: {error}") from None
    if not rows:
        raise SuiteError("No evaluation files to report on" + (f" ({len(missing)} expected, none exist)" if missing else ""))
    frame = pd.DataFrame(verdict_rows, columns=["task", "method", "source", "target", "seed", "id", "correct"])
    verdicts = {key: group.pivot(index="seed", columns="id", values="correct").dropna(axis=1)
                for key, group in frame.groupby(["task", "method", "source", "target"])}
    return Results(pd.DataFrame(rows), verdicts, samples, missing)


def load_prompts(prompt_files) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in prompt_files if Path(p).exists()]


# ---------------------------------------------------------------- statistics per cell


def _paired(method: pd.DataFrame, baseline: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The two verdict matrices on their common test rows, in one order."""
    ids = method.columns.intersection(baseline.columns)
    return method[ids].to_numpy(), baseline[ids].to_numpy()


def _baseline_for(results: Results, task: str, target: str) -> pd.DataFrame | None:
    """Zero-shot CoT's verdicts on ``target``: its own cell, else (the prompt is the same) any source's."""
    own = results.verdicts.get((task, BASELINE, target, target))
    if own is not None:
        return own
    return next((v for (t, m, _, tg), v in results.verdicts.items() if (t, m, tg) == (task, BASELINE, target)), None)


def _row(estimate: stats.Estimate | None, prefix: str) -> dict:
    if estimate is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    row = {prefix: 100 * estimate.value, f"{prefix}_low": 100 * estimate.low, f"{prefix}_high": 100 * estimate.high}
    if estimate.p_value is not None or prefix != "accuracy":
        row[f"{prefix}_p"] = estimate.p_value
        row[f"{prefix}_significant"] = estimate.significant
    return row


def _group_estimates(results: Results, tasks: list[str], method: str, source: str, target: str) -> dict:
    """Accuracy over ``tasks`` (equal weight) and the paired difference from the target's zero-shot CoT."""
    cells = [results.verdicts[(t, method, source, target)] for t in tasks]
    accuracy = stats.family_accuracy([c.to_numpy() for c in cells]) if len(cells) > 1 else \
        stats.accuracy(cells[0].to_numpy())
    row = {"tasks": len(tasks), "rows": accuracy.n_rows, "seeds": accuracy.n_seeds, **_row(accuracy, "accuracy")}
    baselines = [_baseline_for(results, t, target) for t in tasks]
    if method == BASELINE or any(b is None for b in baselines):
        return row | _row(None, "vs_cot")
    pairs = [_paired(c, b) for c, b in zip(cells, baselines)]
    difference = stats.family_difference(pairs) if len(pairs) > 1 else stats.paired_difference(*pairs[0])
    return row | _row(difference, "vs_cot")


def main_frame(results: Results) -> pd.DataFrame:
    """One row per task model x method x family column, same-model cells."""
    same = results.cells[results.cells.source == results.cells.target]
    rows = []
    for (source, method, family), group in same.groupby(["source", "method", "family"]):
        tasks = sorted(set(group.task))
        rows.append({"model": source, "method": method, "column": _COLUMN_OF_FAMILY.get(family, family),
                     **_group_estimates(results, tasks, method, source, source)})
    return pd.DataFrame(rows)


def per_task_frame(results: Results) -> pd.DataFrame:
    same = results.cells[results.cells.source == results.cells.target]
    rows = [{"model": source, "method": method, "task": task, **_group_estimates(results, [task], method, source, source)}
            for (source, method, task), _ in same.groupby(["source", "method", "task"])]
    return pd.DataFrame(rows)


def transfer_frame(results: Results) -> pd.DataFrame:
    rows = []
    for (method, source, target), group in results.cells.groupby(["method", "source", "target"]):
        rows.append({"method": method, "source": source, "target": target,
                     **_group_estimates(results, sorted(set(group.task)), method, source, target)})
    return pd.DataFrame(rows)


def majority_frame(results: Results) -> pd.DataFrame:
    """Zero-shot CoT on every (task, target) against the majority answer of the same test rows, paired."""
    rows = []
    for task, target in sorted(set(zip(results.cells.task, results.cells.target))):
        cot = _baseline_for(results, task, target)
        if cot is None:
            continue
        gold = {s["id"]: s["gold"] for (t, m, _, tg, _), lines in results.samples.items()
                if (t, m, tg) == (task, BASELINE, target) for s in lines}
        counts = pd.Series([gold[i] for i in cot.columns]).value_counts()
        answer = sorted(counts.index[counts == counts.max()])[0]  # a tie: the first in sort order
        majority = np.tile([float(gold[i] == answer) for i in cot.columns], (len(cot.index), 1))
        rows.append({"model": target, "task": task, "rows": len(cot.columns), "majority answer": answer,
                     "majority": 100 * majority[0].mean(), **_row(stats.accuracy(cot.to_numpy()), "accuracy"),
                     **_row(stats.paired_difference(cot.to_numpy(), majority), "vs_majority")})
    return pd.DataFrame(rows)


def _majority_display(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    rows = [row for _, row in frame.iterrows()]
    return frame[["model", "task", "rows", "majority answer"]].assign(**{
        "majority": frame["majority"].round(1), "zero-shot CoT": [_accuracy_text(row) for row in rows],
        "CoT - majority": [_difference_text(row, "vs_majority") for row in rows]})


def scores_frame(results: Results) -> pd.DataFrame:
    columns = ["accuracy", "strict_accuracy", "strict_parse_rate", "lenient_accuracy", "lenient_parse_rate", "truncated"]
    frame = results.cells.groupby(["source", "target", "method", "task", "answer_step"])[columns].mean().reset_index()
    frame[columns] = 100 * frame[columns].astype(float)
    return frame.rename(columns={"accuracy": "headline_accuracy"})


def published_frame(results: Results, main: pd.DataFrame, published_file: Path = PUBLISHED) -> pd.DataFrame:
    """Our cells that the paper also reports, with the published value and the difference: same-model
    family columns (its main table), and transfer cells per task and over the tasks it averages (its
    transfer table) where every one of those tasks was run."""
    import yaml

    published = yaml.safe_load(published_file.read_text())
    rows = []

    def add(source, target, method, column, tasks, estimate, value):
        rows.append({"source": source, "target": target, "method": method, "column": column, "tasks": tasks,
                     "accuracy": estimate["accuracy"], "accuracy_low": estimate["accuracy_low"],
                     "accuracy_high": estimate["accuracy_high"], "published": value,
                     "ours_minus_published": estimate["accuracy"] - value})

    for _, cell in main.iterrows():
        value = published["main"].get(cell.model, {}).get(cell.method, {}).get(cell.column)
        if value is not None:
            add(cell.model, cell.model, cell.method, cell.column, cell.tasks, cell, value)
    for source, targets in published.get("transfer", {}).items():
        for target, methods in targets.items():
            for method, values in methods.items():
                tasks = [task for task in values if task != "average"]
                run = [task for task in tasks if (task, method, source, target) in results.verdicts]
                for task in run:
                    add(source, target, method, task, 1, _group_estimates(results, [task], method, source, target),
                        values[task])
                if run and run == tasks and "average" in values:
                    add(source, target, method, f"average of {len(tasks)} tasks", len(tasks),
                        _group_estimates(results, tasks, method, source, target), values["average"])
    return pd.DataFrame(rows, columns=["source", "target", "method", "column", "tasks", "accuracy", "accuracy_low",
                                       "accuracy_high", "published", "ours_minus_published"])


def _published_display(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"source": frame.source, "target": frame.target, "method": frame.method,
                         "column": frame.column, "our tasks": frame.tasks,
                         "ours": [_accuracy_text(row) for _, row in frame.iterrows()],
                         "published": frame.published.map("{:.1f}".format),
                         "ours - published": frame.ours_minus_published.map("{:+.1f}".format)})


def budget_frame(prompts: list[dict]) -> pd.DataFrame:
    """Per method and model: what the runs spent, as a share of the budget, and why they stopped."""
    rows = []
    for record in prompts:
        budget = record["budget"]
        task_usage = budget.get("task_model", {})
        optimizer_usage = budget.get("optimizer_model", {})
        cap = budget.get("max_task_calls")
        rows.append({
            "method": record["optimizer"], "model": record["model"],
            "task calls": budget["task_calls"], "budget": cap,
            "spent %": 100.0 * budget["task_calls"] / cap if cap else None,
            "optimizer calls": budget["optimizer_calls"],
            "stopped": record["stopped"]["reason"],
            "task-model tokens": _tokens(task_usage),
            "optimizer tokens": _tokens(optimizer_usage),
            "forward/backward passes": budget.get("forward_passes", 0) + budget.get("backward_passes", 0),
            "seconds": budget.get("seconds", {}).get("total", 0.0),
        })
    if not rows:
        return pd.DataFrame(columns=["method", "model"])
    frame = pd.DataFrame(rows)
    numeric = frame.groupby(["method", "model"]).mean(numeric_only=True)
    reasons = frame.groupby(["method", "model"])["stopped"].agg(lambda r: ", ".join(sorted(set(r))))
    return numeric.join(reasons).round(1).reset_index()


def _tokens(usage: dict) -> int:
    """Tokens a run's generations stand for, whether computed now or served from the cache."""
    return sum(usage.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "cached_prompt_tokens",
                                             "cached_completion_tokens"))


def prompts_frame(prompts: list[dict]) -> pd.DataFrame:
    """Each chosen prompt, with its dev accuracy and the initial prompt's on the same dev rows (the final
    choice; a method's prompt that only ties the initial one is chosen, so a reader should see the tie)."""
    rows = []
    for r in prompts:
        selection = r.get("selection") or {}
        dev = {c["prompt"]: c.get("dev_accuracy") for c in selection.get("candidates", [])}
        initial = r["trajectory"][0]["prompt"] if r.get("trajectory") else None
        chosen, start = dev.get(r["prompt"]), dev.get(initial)
        rows.append({"method": r["optimizer"], "task": r["task"], "model": r["model"], "seed": r["provenance"]["seed"],
                     "prompt": r["prompt"], "stopped": r["stopped"]["reason"],
                     "dev_chosen": None if chosen is None else 100 * chosen,
                     "dev_initial": None if start is None else 100 * start, "dev_rows": selection.get("n")})
    return pd.DataFrame(rows, columns=["method", "task", "model", "seed", "prompt", "stopped", "dev_chosen",
                                       "dev_initial", "dev_rows"]).sort_values(["task", "model", "method", "seed"])


# ---------------------------------------------------------------- formatting


def _prompts_display(frame: pd.DataFrame) -> pd.DataFrame:
    dev = [f"{row.dev_chosen:.1f} / {row.dev_initial:.1f} ({row.dev_rows:.0f} rows)"
           if pd.notna(row.dev_chosen) and pd.notna(row.dev_initial) else "–" for row in frame.itertuples()]
    return frame[["method", "task", "model", "seed", "prompt", "stopped"]].assign(**{"dev: chosen / initial": dev})


def _accuracy_text(row, prefix: str = "accuracy") -> str:
    if row is None or pd.isna(row.get(prefix)):
        return "–"
    return f"{row[prefix]:.1f} [{row[prefix + '_low']:.1f}, {row[prefix + '_high']:.1f}]"


def _difference_text(row, prefix: str = "vs_cot") -> str:
    if row is None or pd.isna(row.get(prefix)):
        return "–"
    mark = f" {_MARK}" if row.get(f"{prefix}_significant") else ""
    return f"{row[prefix]:+.1f} [{row[prefix + '_low']:+.1f}, {row[prefix + '_high']:+.1f}]{mark}"


def _wide(frame: pd.DataFrame, index: list[str], columns: list[str], text) -> pd.DataFrame:
    """A display table: ``index`` x ``columns`` with each cell formatted by ``text(row)``."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.assign(_text=[text(row) for _, row in frame.iterrows()])
    table = cells.pivot_table(index=index, columns=columns, values="_text", aggfunc="first").fillna("–")
    table.columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    table.columns.name = None
    return table.reset_index()


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """The main table's columns per model in the paper's order: GSM8K, BBH average, FOLIO."""
    order = list(_COLUMN_OF_FAMILY.values())

    def rank(column: str):
        model, _, family = column.rpartition(" / ")
        return (model != "", model, order.index(family) if family in order else len(order))

    return table[sorted(table.columns, key=rank)]


@dataclass
class Table:
    name: str
    numbers: pd.DataFrame  # the CSV: every number, one row per cell
    display: pd.DataFrame  # Markdown, LaTeX and HTML: formatted cells

    @property
    def caption(self) -> str:
        return _CAPTIONS[self.name].format(interval=stats.INTERVAL_NOTE, mark=_MARK)


def build_tables(results: Results, prompts: list[dict]) -> list[Table]:
    main, per_task, transfer = main_frame(results), per_task_frame(results), transfer_frame(results)
    scores, budget, chosen = scores_frame(results), budget_frame(prompts), prompts_frame(prompts)
    published, majority = published_frame(results, main), majority_frame(results)
    tables = [
        Table("main", main, _ordered(_wide(main, ["method"], ["model", "column"], _accuracy_text))),
        Table("main_vs_cot", main, _ordered(_wide(main, ["method"], ["model", "column"], _difference_text))),
        Table("per_task", per_task, _wide(per_task, ["model", "method"], ["task"], _accuracy_text)),
        Table("per_task_vs_cot", per_task, _wide(per_task, ["model", "method"], ["task"], _difference_text)),
        Table("transfer", transfer, _wide(transfer, ["method", "source"], ["target"], _accuracy_text)),
        Table("transfer_vs_cot", transfer, _wide(transfer, ["method", "source"], ["target"], _difference_text)),
        Table("above_majority", majority, _majority_display(majority)),
        Table("scores", scores, scores.round(1)),
        Table("published", published, _published_display(published)),
        Table("budget", budget, budget),
        Table("prompts", chosen, _prompts_display(chosen)),
        Table("missing", pd.DataFrame({"file": results.missing}), pd.DataFrame({"file": results.missing})),
    ]
    return tables


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        display = table.display if not table.display.empty else pd.DataFrame({"": ["no cells"]})
        outputs = {
            "csv": lambda p: table.numbers.to_csv(p, index=False),
            "md": lambda p: p.write_text(f"{table.caption}\n\n{display.to_markdown(index=False)}\n"),
            "tex": lambda p: p.write_text(display.to_latex(index=False, caption=table.caption, label=f"tab:{table.name}")),
            "html": lambda p: p.write_text(_html_page(table.name, table.caption, display)),
        }
        for ext, write in outputs.items():
            path = out_dir / f"{table.name}.{ext}"
            write(path)
            written.append(path)
    return written


_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:1em} table{border-collapse:collapse} "
          "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top} "
          "th{background:#f3f3f3} caption{caption-side:top;text-align:left;padding:4px 0;max-width:60em} "
          "pre{white-space:pre-wrap;margin:0;max-width:50em}")


def _html_page(title: str, caption: str, frame: pd.DataFrame) -> str:
    body = frame.to_html(index=False, border=0, escape=True)
    opening_end = body.index(">") + 1  # the caption goes right inside <table ...>
    body = f"{body[:opening_end]}<caption>{html.escape(caption)}</caption>{body[opening_end:]}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def write_sample_browser(results: Results, out_dir: str | Path, rows_per_cell: int = 3) -> list[Path]:
    """One HTML page per task: a few test rows of every cell (question, reasoning, answer, gold)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted(set(results.cells.task)):
        sections = []
        for (t, method, source, target, seed), lines in sorted(results.samples.items()):
            if t != task:
                continue
            rows = "".join(
                f"<tr><td>{html.escape(s['id'])}</td><td><pre>{html.escape(s.get('question', ''))}</pre></td>"
                f"<td><pre>{html.escape(s.get('reasoning', ''))}</pre></td><td>{html.escape(str(s.get('answer')))}</td>"
                f"<td>{html.escape(str(s.get('gold')))}</td><td>{'yes' if s.get('correct') else 'no'}</td></tr>"
                for s in lines[:rows_per_cell])
            sections.append(f"<h3>{html.escape(method)}: {html.escape(source)} → {html.escape(target)}, seed {seed}</h3>"
                            "<table><tr><th>row</th><th>question</th><th>reasoning</th><th>answer</th><th>gold</th>"
                            f"<th>right</th></tr>{rows}</table>")
        path = out_dir / f"samples_{task}.html"
        path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(task)}: test rows"
                        f"</title><style>{_STYLE}</style></head><body><h2>{html.escape(task)}: the first "
                        f"{rows_per_cell} test rows of every cell</h2>{''.join(sections)}</body></html>\n")
        written.append(path)
    return written


# ---------------------------------------------------------------- plots

#: line styles of the split a trajectory score was measured on
_SPLIT_STYLE = {"train": "-", "minibatch": "-.", "screen": ":", "dev": "--"}


def _text_colour(cmap, norm, value) -> str:
    """Black or white, whichever reads better on the cell's colour (relative luminance)."""
    red, green, blue, _ = cmap(norm(value))
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45 else "white"


def _grid(cells: pd.DataFrame, rows: list[str], columns: list[str], row_of, column_of, value: str, text):
    """A heatmap's values and cell texts: one cell per row of ``cells``, NaN where there is none."""
    values = np.full((len(rows), len(columns)), np.nan)
    texts = [[""] * len(columns) for _ in rows]
    for _, cell in cells.iterrows():
        i, j = rows.index(row_of(cell)), columns.index(column_of(cell))
        values[i, j] = cell[value] if pd.notna(cell[value]) else np.nan
        texts[i][j] = text(cell).replace(" [", "\n[")
    return values, texts


def _centred(values: np.ndarray):
    """A diverging colour scale with white at 0, symmetric, at least +-5 points."""
    from matplotlib.colors import TwoSlopeNorm

    limit = max(5.0, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 5.0
    return TwoSlopeNorm(0, -limit, limit)


def _heatmap(axis, values: np.ndarray, texts: list[list[str]], cmap, norm, rows: list[str], columns: list[str]):
    image = axis.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            colour = "black" if np.isnan(values[i, j]) else _text_colour(cmap, norm, values[i, j])
            axis.text(j, i, texts[i][j], ha="center", va="center", color=colour, fontsize=7)
    return image


def write_plots(tables: dict[str, Table], prompts: list[dict], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    # Accuracy during optimization, per task.
    task_names = sorted({r["task"] for r in prompts}) or ["(no prompt files)"]
    columns = min(3, len(task_names))
    rows = -(-len(task_names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis, task in zip(axes.flat, task_names):
        for record in (r for r in prompts if r["task"] == task):
            for split, style in _SPLIT_STYLE.items():  # one line per split: scores on different rows never mix
                points = [(s["task_calls"], 100 * s["score"]) for s in record["trajectory"]
                          if s["score"] is not None and s["split"] == split]
                if points:
                    axis.plot(*zip(*points), style, marker=".", label=f"{record['optimizer']} ({record['model']}, "
                              f"seed {record['provenance']['seed']}, {split})")
        axis.set_title(task)
        axis.set_xlabel("task calls spent")
        axis.set_ylabel("best accuracy so far (%)")
        axis.set_ylim(0, 100)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(task_names):]:
        axis.axis("off")
    written.append(_save(figure, out_dir / "accuracy_vs_task_calls.png"))

    # Difference from zero-shot CoT per task (and family averages), one panel per task model.
    per_task = tables["per_task"].numbers
    main = tables["main"].numbers
    diverging = plt.get_cmap("RdBu")
    models = sorted(set(per_task.model)) if not per_task.empty else []
    figure, axes = plt.subplots(1, max(1, len(models)), squeeze=False,
                                figsize=(max(6.0, 1.3 * _n_methods(per_task) + 3) * max(1, len(models)),
                                         1.5 + 0.42 * (_n_tasks(per_task) + 3)))
    for axis, model in zip(axes.flat, models):
        cells = pd.concat([per_task[per_task.model == model].rename(columns={"task": "row"}),
                           main[(main.model == model) & (main.tasks > 1)].rename(columns={"column": "row"})])
        cells = cells[cells.method != BASELINE]
        if cells.empty or cells.vs_cot.isna().all():
            axis.set_title(f"{model}: no zero-shot CoT cell to compare with")
            axis.axis("off")
            continue
        row_names, method_names = list(dict.fromkeys(cells.row)), sorted(set(cells.method))
        values, texts = _grid(cells, row_names, method_names, lambda c: c.row, lambda c: c.method, "vs_cot",
                              _difference_text)
        image = _heatmap(axis, values, texts, diverging, _centred(values), row_names, method_names)
        axis.set_title(f"{model}: test accuracy minus zero-shot CoT (points)")
        figure.colorbar(image, ax=axis, label="difference (points)")
    written.append(_save(figure, out_dir / "vs_cot_per_task.png"))

    # Transfer: accuracy, and difference from the target's zero-shot CoT.
    transfer = tables["transfer"].numbers
    for name, column, cmap, text in (("transfer_heatmap", "accuracy", plt.get_cmap("viridis"), _accuracy_text),
                                     ("transfer_vs_cot", "vs_cot", diverging, _difference_text)):
        row_names = [f"{m} ({s})" for m, s in dict.fromkeys(zip(transfer.method, transfer.source))]
        targets = sorted(set(transfer.target))
        values, texts = _grid(transfer, row_names, targets, lambda c: f"{c.method} ({c.source})",
                              lambda c: c.target, column, text)
        figure, axis = plt.subplots(figsize=(3 + 1.9 * len(targets), 1.2 + 0.55 * len(row_names)))
        if column == "accuracy":
            norm, label = Normalize(0, 100), "test accuracy (%)"
        else:
            norm, label = _centred(values), "difference from the target's zero-shot CoT (points)"
        image = _heatmap(axis, values, texts, cmap, norm, row_names, targets)
        axis.set_xlabel("target model")
        figure.colorbar(image, ax=axis, label=label)
        written.append(_save(figure, out_dir / f"{name}.png"))

    # Per-task accuracy with intervals: tasks down the side, so 27 tasks stay readable.
    written.append(_per_task_plot(plt, per_task, out_dir / "per_task_accuracy.png"))
    written.append(_pareto_plot(plt, main, tables["budget"].numbers, out_dir / "pareto.png"))
    return written


def _n_methods(frame: pd.DataFrame) -> int:
    return len(set(frame.method)) if not frame.empty else 1


def _n_tasks(frame: pd.DataFrame) -> int:
    return len(set(frame.task)) if not frame.empty else 1


def _per_task_plot(plt, per_task: pd.DataFrame, path: Path) -> Path:
    models = sorted(set(per_task.model)) if not per_task.empty else []
    tasks = sorted(set(per_task.task)) if not per_task.empty else []
    methods = sorted(set(per_task.method)) if not per_task.empty else []
    figure, axes = plt.subplots(1, max(1, len(models)), squeeze=False, sharey=True,
                                figsize=(6.5 * max(1, len(models)), 1.6 + 0.45 * max(1, len(tasks))))
    offsets = np.linspace(-0.3, 0.3, max(1, len(methods)))
    markers = "osD^v<>PX*h"
    for axis, model in zip(axes.flat, models):
        cells = per_task[per_task.model == model]
        for offset, marker, method in zip(offsets, markers * 3, methods):
            rows = cells[cells.method == method]
            y = [tasks.index(t) + offset for t in rows.task]
            axis.errorbar(rows.accuracy, y, xerr=[rows.accuracy - rows.accuracy_low, rows.accuracy_high - rows.accuracy],
                          fmt=marker, markersize=4, capsize=2, linewidth=0.8, label=method)
        axis.set_yticks(range(len(tasks)), tasks)
        axis.set_ylim(len(tasks) - 0.5, -0.5)
        axis.set_xlim(0, 100)
        axis.set_xlabel("test accuracy (%), 95% interval")
        axis.set_title(f"{model} (same-model prompts)")
        axis.grid(axis="x", alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    if not models:
        axes[0, 0].axis("off")
    return _save(figure, path)


def _pareto_plot(plt, main: pd.DataFrame, budget: pd.DataFrame, path: Path) -> Path:
    """Test accuracy (average over the model's task columns) against what optimization spent (the budget table)."""
    costs = ["task calls", "task-model tokens"]
    if not main.empty and set(costs) <= set(budget.columns):
        accuracy = main.groupby(["model", "method"]).accuracy.mean().reset_index()
        points = accuracy.merge(budget[["method", "model", *costs]], on=["method", "model"])
    else:
        points = pd.DataFrame(columns=["model", "method", "accuracy", *costs])
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, cost in zip(axes, costs):
        for model, group in points.groupby("model"):
            colour = axis.scatter(group[cost], group.accuracy, label=model).get_facecolor()[0]
            for _, point in group.iterrows():
                axis.annotate(point.method, (point[cost], point.accuracy), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
            frontier = _pareto_front(group[[cost, "accuracy"]].to_numpy(dtype=float))
            if len(frontier) > 1:
                axis.step(frontier[:, 0], frontier[:, 1], where="post", alpha=0.5, color=colour)
        axis.set_xlabel(f"{cost} spent per optimization run (mean)")
        axis.set_ylabel("test accuracy (%), mean over task columns")
        axis.set_ylim(0, 100)
        if len(points):
            axis.legend(fontsize=7)
    figure.suptitle("Accuracy against optimization cost (the line joins the Pareto-optimal methods)")
    return _save(figure, path)


def _pareto_front(points: np.ndarray) -> np.ndarray:
    """The points no other point beats on both lower cost and higher accuracy, by cost."""
    ordered = points[np.lexsort((-points[:, 1], points[:, 0]))]
    front, best = [], -np.inf
    for cost, accuracy in ordered:
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return np.array(front)


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def build_report(eval_files, prompt_files, tables_dir, plots_dir, pages_dir=None, allow_missing: bool = False) -> list[Path]:
    results = load_results(eval_files, allow_missing=allow_missing)
    prompts = load_prompts(prompt_files)
    if results.missing:
        log.warning("%d expected evaluation files are missing; their cells are left out (listed in missing.md)",
                    len(results.missing))
    tables = build_tables(results, prompts)
    written = write_tables(tables, tables_dir) + write_plots({t.name: t for t in tables}, prompts, plots_dir)
    if pages_dir is not None:
        written += write_sample_browser(results, pages_dir)
    return written
