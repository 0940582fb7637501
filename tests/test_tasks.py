"""The task layer: registry, examples, extractors, deterministic splits."""

import json
import re

import pytest

import tasks
from suite_errors import DataError
from tasks.extractors import VARIANTS
from tasks.heldout import load_test_examples

BBH_TASKS = 27


def test_registry_has_every_task():
    names = tasks.task_names()
    families = [tasks.get_task(name).family for name in names]
    assert families.count("bbh") == BBH_TASKS
    assert {"gsm8k", "folio"} <= set(names)
    assert len(names) == BBH_TASKS + 2


@pytest.mark.parametrize("name", tasks.task_names())
def test_every_gold_answer_scores_as_correct_after_its_extractor(name):
    """The training target (extractor + answer) parses back to the gold answer."""
    task = tasks.get_task(name)
    data = tasks.load_task_data(name)
    free_text_gold = 0
    for example in data.train + data.dev:
        tail = task.target_text(example.gold)
        if task.answer_format.kind == "multiple_choice" and not re.fullmatch(r"\([A-R]\)", example.gold):
            free_text_gold += 1  # three BBH labels are free text; they can never match
            continue
        assert task.is_correct(tail, example.gold), (example.id, tail)
        assert not task.is_correct("", example.gold)
    assert free_text_gold <= 2


@pytest.mark.parametrize("name", [n for n in tasks.task_names() if tasks.get_task(n).answer_format.kind == "multiple_choice"])
def test_multiple_choice_extractor_lists_every_gold_letter(name):
    task = tasks.get_task(name)
    golds = {e.gold for e in tasks.load_task_data(name).train + load_test_examples(name)}
    for gold in golds:
        letter = gold.strip("()")
        if len(letter) == 1:
            assert f"'${letter}'" in task.extractor().text, (name, letter)
            assert letter in task.answer_format.options, (name, letter)


def test_extractor_fixes_listed_in_the_spec():
    assert "'$F'" in tasks.get_task("date_understanding").extractor().text
    assert "'$K'" in tasks.get_task("geometric_shapes").extractor().text
    navigate = tasks.get_task("navigate")
    assert navigate.extractor().text.endswith("is $") and "'$ Yes'" in navigate.extractor().text
    assert navigate.target_text("Yes") == " Yes"  # the space is the answer's, as '$ Yes' lists it
    assert tasks.get_task("date_understanding").target_text("(B)") == "B"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", tasks.task_names())
def test_every_extractor_variant_ends_without_whitespace_and_lists_its_target(name, variant):
    """Templates that trim the assistant turn cannot move the answer boundary; the listing shows the target."""
    task = tasks.get_task(name)
    extractor = task.extractor(variant)
    assert extractor.text == extractor.text.rstrip()
    choices = task.choices(variant)
    if choices is not None:
        assert len(choices) == len(task.answer_format.options)
        assert all(task.answer_format.parse_strict(c) == o for c, o in zip(choices, task.answer_format.options))
        if variant != "plain":  # the $-variants list each answer exactly as it follows the extractor
            assert all(f"'${c}'" in extractor.text for c in choices), (name, variant)


def test_extractor_variants_match_the_terms_type():
    from typing import get_args

    from optimizers.contract import ExtractorVariant

    assert set(get_args(ExtractorVariant)) == set(VARIANTS)


def test_unknown_extractor_variant_is_named():
    with pytest.raises(KeyError, match="Unknown extractor variant 'dolar'.*dollar"):
        tasks.get_task("navigate").extractor("dolar")


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("navigate", (50, 100, 100)),
        ("penguins_in_a_table", (50, 48, 48)),
        ("causal_judgement", (50, 68, 69)),
        ("gsm8k", (100, 100, 1319)),
        ("folio", (100, 100, 204)),
    ],
)
def test_split_sizes_follow_the_protocol(name, sizes):
    data = tasks.load_task_data(name)
    test = load_test_examples(name)
    assert (len(data.train), len(data.dev), len(test)) == sizes
    ids = [e.id for e in data.train + data.dev + test]
    assert len(ids) == len(set(ids)), "splits overlap"


def test_bbh_split_is_positional_in_file_order():
    data = tasks.load_task_data("navigate")
    assert [e.id for e in data.train[:2]] == ["bbh/navigate#0", "bbh/navigate#1"]
    assert data.dev[0].id == "bbh/navigate#50"
    assert load_test_examples("navigate")[0].id == "bbh/navigate#150"


def test_gsm8k_gold_is_the_integer_after_the_marker():
    first = tasks.load_task_data("gsm8k").train[0]
    assert first.gold == "72" and "Natalia" in first.question


def test_folio_question_and_labels():
    data = tasks.load_task_data("folio")
    assert {e.gold for e in data.train} <= {"True", "False", "Uncertain"}
    assert "Premises:" in data.train[0].question and "Conclusion:" in data.train[0].question


def test_task_data_holds_no_test_rows():
    data = tasks.load_task_data("navigate")
    assert not hasattr(data, "test")
    test_ids = {e.id for e in load_test_examples("navigate")}
    assert not test_ids & {e.id for e in data.train + data.dev}


def test_split_file_round_trip_is_identical(tmp_path):
    path = tasks.write_splits("snarks", tmp_path / "snarks.json")
    record = json.loads(path.read_text())
    assert record["sizes"] == {"train": 50, "dev": 64, "test": 64}
    assert record["data_sha256"]["bbh/snarks.json"]
    from_file = tasks.load_task_data("snarks", split_file=path)
    computed = tasks.load_task_data("snarks")
    assert from_file == computed
    assert load_test_examples("snarks", split_file=path) == load_test_examples("snarks")


def test_split_file_follows_its_ids_not_the_rule(tmp_path):
    path = tasks.write_splits("snarks", tmp_path / "snarks.json")
    record = json.loads(path.read_text())
    record["train"], record["dev"] = record["dev"][:5], record["train"][:5]
    path.write_text(json.dumps(record))
    data = tasks.load_task_data("snarks", split_file=path)
    assert [e.id for e in data.train] == record["train"]


def test_split_file_for_other_task_or_data_is_refused(tmp_path):
    from suite_errors import DataError

    path = tasks.write_splits("snarks", tmp_path / "snarks.json")
    with pytest.raises(DataError, match="is for task 'snarks', not 'navigate'"):
        tasks.load_task_data("navigate", split_file=path)
    record = json.loads(path.read_text())
    record["data_sha256"]["bbh/snarks.json"] = "0" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="other data files"):
        tasks.load_task_data("snarks", split_file=path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r | {"train": r["train"][:-1] + [r["test"][0]]}, "in both train and test"),
    (lambda r: r | {"dev": r["dev"] + r["dev"][:1]}, "lists rows twice in dev"),
    (lambda r: {k: v for k, v in r.items() if k != "train"}, "has no train id list"),
])
def test_a_split_file_that_would_leak_or_is_incomplete_is_refused(tmp_path, edit, message):
    """The optimizers never see test rows, even when someone edits a split file."""
    path = tasks.write_splits("snarks", tmp_path / "snarks.json")
    record = json.loads(path.read_text())
    path.write_text(json.dumps(edit(record)))
    with pytest.raises(DataError, match=message) as error:
        tasks.load_task_data("snarks", split_file=path)
    assert str(path) in str(error.value)
