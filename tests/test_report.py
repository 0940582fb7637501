"""The report: tables with intervals and paired differences, partial results, HTML pages and plots."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.report import TABLES, build_report

ROWS = 40


def _write_cell(root: Path, task: str, method: str, source: str, target: str, seed: int, correct: list[bool],
                golds: list[str] | None = None) -> str:
    path = root / "eval" / task / source / method / f"seed{seed}" / f"{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    golds = golds or ["Yes"] * len(correct)
    samples = [{"id": f"bbh/{task}#{i}", "question": f"Question {i}?", "gold": g, "answer": g if c else "No",
                "correct": c, "strict": "[invalid]", "lenient": g if c else "No", "reasoning": f"Reasoning {i}."}
               for i, (c, g) in enumerate(zip(correct, golds))]
    path.with_suffix(".samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    accuracy = sum(correct) / len(correct)
    path.write_text(json.dumps({
        "task": task, "source_model": source, "optimizer": method, "target_model": target, "seed": seed,
        "prompt": f"prompt of {method}", "accuracy": accuracy, "n": len(correct), "answer_step": "choice",
        "strict_accuracy": 0.0, "strict_parse_rate": 0.0, "lenient_accuracy": accuracy, "lenient_parse_rate": 1.0,
        "truncated": 0.25, "samples_file": path.with_suffix(".samples.jsonl").name}))
    return str(path)


def _write_prompt(root: Path, task: str, method: str, model: str, seed: int) -> str:
    path = root / "prompts" / task / model / method / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    trajectory = [{"step": s, "prompt": "p", "task_calls": 10 * s, "optimizer_calls": s, "score": 0.5 + 0.1 * s,
                   "split": "train" if s < 2 else "dev"} for s in range(3)]
    path.write_text(json.dumps({
        "optimizer": method, "task": task, "model": model, "prompt": f"prompt of {method}", "trajectory": trajectory,
        "stopped": {"reason": "task_calls", "task_calls": 20, "optimizer_calls": 3},
        "budget": {"task_calls": 20, "max_task_calls": 25, "optimizer_calls": 3,
                   "task_model": {"prompt_tokens": 50 * (1 + len(method)), "completion_tokens": 5},
                   "seconds": {"total": 2.0}},
        "provenance": {"seed": seed, "model": {"name": model, "checksum": "x"}, "environment": {}}}))
    return str(path)


def _verdicts(method: str, target: str, task: str) -> list[bool]:
    """Zero-shot CoT right on the first 20 rows; 'good' also on 12 more; 'same' swaps one win for one loss."""
    base = [i < 20 for i in range(ROWS)]
    if method == "good":
        return [i < 32 for i in range(ROWS)]
    if method == "same":
        return [(i < 20 and i != 0) or i == 25 for i in range(ROWS)]
    return base


@pytest.fixture
def grid(tmp_path):
    evals, prompts = [], []
    for task in ("navigate", "snarks"):
        for method in ("zero_shot_cot", "good", "same"):
            prompts.append(_write_prompt(tmp_path, task, method, "small", 0))
            for target in ("small", "big"):
                evals.append(_write_cell(tmp_path, task, method, "small", target, 0, _verdicts(method, target, task)))
    return tmp_path, evals, prompts


def test_tables_carry_intervals_and_paired_differences_from_zero_shot_cot(grid):
    root, evals, prompts = grid
    written = build_report(evals, prompts, root / "tables", root / "plots", root / "pages")
    names = {p.name for p in written}
    for table in TABLES:
        assert {f"{table}.csv", f"{table}.md", f"{table}.tex", f"{table}.html"} <= names
    main = pd.read_csv(root / "tables" / "main.csv")
    good = main[(main.method == "good") & (main.model == "small")].iloc[0]
    assert good.column == "BBH average" and good.tasks == 2 and good.rows == 2 * ROWS
    assert good.accuracy == pytest.approx(80.0) and good.accuracy_low < 80 < good.accuracy_high
    assert good.vs_cot == pytest.approx(30.0) and good.vs_cot_low > 0 and good.vs_cot_significant
    same = main[main.method == "same"].iloc[0]
    assert same.vs_cot == pytest.approx(0.0) and same.vs_cot_low < 0 < same.vs_cot_high
    assert not same.vs_cot_significant
    assert pd.isna(main[main.method == "zero_shot_cot"].iloc[0].vs_cot)  # no difference from itself

    per_task = pd.read_csv(root / "tables" / "per_task.csv")
    navigate = per_task[(per_task.method == "good") & (per_task.task == "navigate")].iloc[0]
    # 12 discordant rows, all won: McNemar's exact p = 2 / 2**12
    assert navigate.vs_cot_p == pytest.approx(2 / 2 ** 12) and navigate.vs_cot_significant

    transfer = pd.read_csv(root / "tables" / "transfer.csv")
    assert set(transfer.target) == {"small", "big"}
    assert transfer[(transfer.method == "good") & (transfer.target == "big")].vs_cot.iloc[0] == pytest.approx(30.0)

    display = (root / "tables" / "main_vs_cot.md").read_text()
    assert "+30.0 [" in display and " *" in display and "bootstrap" in display.splitlines()[0]
    assert "('" not in (root / "tables" / "budget.md").read_text()  # index columns are not printed as tuples
    budget = pd.read_csv(root / "tables" / "budget.csv")
    assert budget[budget.method == "good"]["spent %"].iloc[0] == pytest.approx(80.0)


def test_zero_shot_cot_stands_beside_the_majority_answer_of_the_same_test_rows(tmp_path):
    golds = ["(A)" if i % 5 < 3 else "(B)" for i in range(ROWS)]  # 24 (A), 16 (B): the majority scores 60%
    cot = [i < 32 for i in range(ROWS)]  # 80%: right on 12 rows the majority misses, wrong on 4 it gets
    evals = [_write_cell(tmp_path, "navigate", "zero_shot_cot", "small", "small", 0, cot, golds),
             _write_cell(tmp_path, "navigate", "good", "small", "small", 0, cot, golds)]
    build_report(evals, [], tmp_path / "tables", tmp_path / "plots")
    table = pd.read_csv(tmp_path / "tables" / "above_majority.csv")
    assert len(table) == 1  # one row per task and target, whatever the methods
    row = table.iloc[0]
    assert (row.model, row.task, row.rows, row["majority answer"]) == ("small", "navigate", ROWS, "(A)")
    assert row.majority == pytest.approx(60.0) and row.accuracy == pytest.approx(80.0)
    assert row.vs_majority == pytest.approx(20.0) and row.vs_majority_low < 20 < row.vs_majority_high
    # McNemar's exact test on 12 against 4 discordant rows: p = 2 P(X <= 4), X ~ Bin(16, 1/2)
    assert row.vs_majority_p == pytest.approx(2 * (1 + 16 + 120 + 560 + 1820) / 2 ** 16)
    assert not row.vs_majority_significant
    display = (tmp_path / "tables" / "above_majority.md").read_text()
    assert "| (A) " in display and "+20.0 [" in display and "majority answer" in display.splitlines()[0]


class _Cells(HTMLParser):
    """The text of every table cell and caption."""

    def __init__(self):
        super().__init__()
        self.cells, self.captions, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "caption"):
            self._open = tag

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open == "td":
            self.cells.append(data)
        elif self._open == "caption":
            self.captions.append(data)


def test_html_tables_and_the_sample_browser_hold_what_a_reader_needs(grid):
    root, evals, prompts = grid
    build_report(evals, prompts, root / "tables", root / "plots", root / "pages")
    parser = _Cells()
    parser.feed((root / "tables" / "main.html").read_text())
    assert any("bootstrap" in c for c in parser.captions)
    assert any(c.startswith("80.0 [") for c in parser.cells)
    prompts_page = _Cells()
    prompts_page.feed((root / "tables" / "prompts.html").read_text())
    assert "prompt of good" in prompts_page.cells
    browser = _Cells()
    browser.feed((root / "pages" / "samples_navigate.html").read_text())
    assert "Question 0?" in browser.cells and "Reasoning 0." in browser.cells


def test_a_partial_set_of_evaluation_files_still_gives_every_table(grid):
    root, evals, prompts = grid
    lost = [e for e in evals if "/good/" in e and e.endswith("big.json")]
    for path in lost:
        Path(path).unlink()
    build_report(evals, prompts, root / "tables", root / "plots", allow_missing=True)
    missing = pd.read_csv(root / "tables" / "missing.csv")
    assert sorted(missing.file) == sorted(lost)
    transfer = pd.read_csv(root / "tables" / "transfer.csv")
    assert not ((transfer.method == "good") & (transfer.target == "big")).any()
    assert "–" in (root / "tables" / "transfer.md").read_text()  # the missing cell is shown as missing
    with pytest.raises(Exception, match="Cannot read evaluation file"):
        build_report(evals, prompts, root / "tables", root / "plots")  # without allow_missing: a clear error


def test_transfer_only_results_give_a_report_without_same_model_cells(tmp_path):
    evals = [_write_cell(tmp_path, "navigate", m, "small", "big", 0, _verdicts(m, "big", "navigate"))
             for m in ("zero_shot_cot", "good")]
    build_report(evals, [], tmp_path / "tables", tmp_path / "plots")
    assert "no cells" in (tmp_path / "tables" / "main.md").read_text()
    transfer = pd.read_csv(tmp_path / "tables" / "transfer.csv")
    assert transfer[transfer.method == "good"].vs_cot.iloc[0] == pytest.approx(30.0)


def test_seeds_are_replicates_of_one_cell(tmp_path):
    evals = [_write_cell(tmp_path, "navigate", "zero_shot_cot", "small", "small", 0, _verdicts("x", "small", "n"))]
    for seed, extra in ((0, 12), (1, 4), (2, 8)):
        evals.append(_write_cell(tmp_path, "navigate", "good", "small", "small", seed,
                                 [i < 20 + extra for i in range(ROWS)]))
    build_report(evals, [], tmp_path / "tables", tmp_path / "plots")
    per_task = pd.read_csv(tmp_path / "tables" / "per_task.csv")
    good = per_task[per_task.method == "good"].iloc[0]
    assert good.seeds == 3 and good.accuracy == pytest.approx(100 * np.mean([32, 24, 28]) / ROWS)
    assert pd.isna(good.vs_cot_p)  # several seeds: the bootstrap interval decides, not McNemar


def test_plots_are_written_and_readable(grid):
    """Every plot is a real image; colour-bar labels and text stay inside the figure."""
    import matplotlib.image

    root, evals, prompts = grid
    written = build_report(evals, prompts, root / "tables", root / "plots")
    plots = [p for p in written if p.suffix == ".png"]
    assert {p.stem for p in plots} == {"accuracy_vs_task_calls", "vs_cot_per_task", "transfer_heatmap",
                                       "transfer_vs_cot", "per_task_accuracy", "pareto"}
    for path in plots:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not blank


def test_the_report_command_reads_a_results_folder(grid):
    root, _, _ = grid
    result = subprocess.run([sys.executable, "-m", "suite_cli", "report", "--results-dir", str(root),
                             "--tables-dir", str(root / "t"), "--plots-dir", str(root / "p"),
                             "--pages-dir", str(root / "s")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    main = pd.read_csv(root / "t" / "main.csv")
    assert set(main.method) == {"zero_shot_cot", "good", "same"}


def test_published_numbers_stand_beside_ours_when_the_setting_matches(tmp_path):
    evals = [_write_cell(tmp_path, task, method, "llama-3-8b-instruct", "llama-3-8b-instruct", 0,
                         _verdicts(method, "", task))
             for task in ("navigate", "snarks") for method in ("zero_shot_cot", "good", "ape")]
    build_report(evals, [], tmp_path / "tables", tmp_path / "plots")
    published = pd.read_csv(tmp_path / "tables" / "published.csv")
    # APE and zero-shot CoT on BBH with Llama-3-8B are in both ('good' is not a method of the paper)
    assert sorted(published.method) == ["ape", "zero_shot_cot"]
    row = published.set_index("method").loc["ape"]
    assert (row.column, row.published, row.tasks) == ("BBH average", 63.1, 2)
    assert row.ours_minus_published == pytest.approx(50.0 - 63.1)
    assert "63.1" in (tmp_path / "tables" / "published.md").read_text()


def test_published_transfer_cells_stand_beside_ours_per_task_and_over_the_papers_five_tasks(tmp_path):
    """The paper's transfer table (Llama-3-8B -> Gemma-2-9B): per task, and its average where all five ran."""
    llama, gemma = "llama-3-8b-instruct", "gemma-2-9b-it"
    five = ["movie_recommendation", "object_counting", "tracking_shuffled_objects_five_objects", "hyperbaton",
            "causal_judgement"]
    evals = [_write_cell(tmp_path, task, "greater", llama, target, 0, _verdicts("greater", "", task))
             for task in five for target in (llama, gemma)]
    evals += [_write_cell(tmp_path, task, "protegi", llama, gemma, 0, _verdicts("good", "", task))
              for task in five[:2]]  # two of the five: per-task rows, no average
    build_report(evals, [], tmp_path / "tables", tmp_path / "plots")
    published = pd.read_csv(tmp_path / "tables" / "published.csv")
    transfer = published[published.source != published.target]
    greater = transfer[transfer.method == "greater"].set_index("column")
    assert list(greater.index) == five + ["average of 5 tasks"]
    assert list(greater.published) == [55, 90, 85, 91, 60, 76.2]
    assert greater.loc["average of 5 tasks", "tasks"] == 5
    assert greater.loc["object_counting", "ours_minus_published"] == pytest.approx(50.0 - 90)
    protegi = transfer[transfer.method == "protegi"]
    assert list(protegi.column) == five[:2] and list(protegi.published) == [53, 84]
    assert protegi.accuracy.tolist() == pytest.approx([80.0, 80.0])
    self_row = published[(published.source == llama) & (published.target == llama)].iloc[0]
    assert (self_row.method, self_row.column, self_row.published, self_row.tasks) == ("greater", "BBH average", 68.7, 5)
    markdown = (tmp_path / "tables" / "published.md").read_text()
    assert "76.2" in markdown and "average of 5 tasks" in markdown


def test_published_transfer_averages_are_the_means_of_their_tasks():
    """A check on the transcription of the paper's transfer table."""
    import yaml

    from evaluation.report import PUBLISHED

    for targets in yaml.safe_load(PUBLISHED.read_text())["transfer"].values():
        for methods in targets.values():
            for values in methods.values():
                tasks = [v for k, v in values.items() if k != "average"]
                assert sum(tasks) / len(tasks) == pytest.approx(values["average"], abs=0.05)


def test_the_prompts_table_shows_the_dev_choice_against_the_initial_prompt(tmp_path):
    """A reader sees whether a chosen prompt beat the initial one on dev or only tied it."""
    evals = [_write_cell(tmp_path, "navigate", method, "small", "small", 0, _verdicts(method, "", "navigate"))
             for method in ("zero_shot_cot", "good", "same")]
    prompts = []
    for method, chosen_accuracy in (("good", 0.75), ("same", 0.5)):
        path = Path(_write_prompt(tmp_path, "navigate", method, "small", 0))
        record = json.loads(path.read_text())
        record["selection"] = {"n": 16, "rule": "best dev accuracy", "candidates": [
            {"prompt": record["prompt"], "dev_accuracy": chosen_accuracy}, {"prompt": "p", "dev_accuracy": 0.5}]}
        path.write_text(json.dumps(record))
        prompts.append(str(path))
    build_report(evals, prompts, tmp_path / "tables", tmp_path / "plots")
    table = pd.read_csv(tmp_path / "tables" / "prompts.csv").set_index("method")
    assert (table.loc["good", "dev_chosen"], table.loc["good", "dev_initial"]) == (75.0, 50.0)
    assert (table.loc["same", "dev_chosen"], table.loc["same", "dev_initial"], table.loc["same", "dev_rows"]) == (50.0, 50.0, 16)
    markdown = (tmp_path / "tables" / "prompts.md").read_text()
    assert "75.0 / 50.0 (16 rows)" in markdown and "50.0 / 50.0 (16 rows)" in markdown
