"""Answer parsing on what small models actually write."""

import pytest

from tasks.answers import FreeText, Integer, Label, MultipleChoice

ABCDE = MultipleChoice("ABCDE")
YES_NO = Label(("Yes", "No"))
VALID = Label(("valid", "invalid"))
FOLIO = Label(("True", "False", "Uncertain"), aliases=(("unknown", "Uncertain"),))


@pytest.mark.parametrize(
    "output, expected",
    [
        ("C", "C"),
        (" $C$", "C"),
        ("(B) 12/25/1937", "B"),
        ("**D**.", "D"),
        ("Answer: E", "E"),
        ("A) the first one", "A"),
        ("Alice is taller, so the answer is (C).", "C"),
        ("Let me think. The options are (A) and (B); I pick (B).\n", "B"),
        ("Alice has the ball.", None),
        ("F", None),  # not an option of this task
        ("", None),
    ],
)
def test_multiple_choice(output, expected):
    assert ABCDE.parse(output) == expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Yes", "Yes"),
        (" yes.", "Yes"),
        ("$ No", "No"),
        ("**No**, because", "No"),
        ("After turning around we are back, so the answer is Yes.", "Yes"),
        ("Nobody knows", None),  # "No" only as part of a word
    ],
)
def test_yes_no(output, expected):
    assert YES_NO.parse(output) == expected


def test_invalid_is_never_read_as_valid():
    assert VALID.parse("invalid") == "invalid"
    assert VALID.parse(" $ invalid.") == "invalid"
    assert VALID.parse("valid") == "valid"
    assert VALID.is_correct("invalid", "invalid") and not VALID.is_correct("invalid", "valid")


def test_label_aliases_and_case():
    assert FOLIO.parse("unknown") == "Uncertain"
    assert FOLIO.parse("UNCERTAIN") == "Uncertain"
    assert FOLIO.is_correct("true", "True")


@pytest.mark.parametrize(
    "output, expected",
    [
        ("8", "8"),
        ("$-50$", "-50"),
        ("**1,234**", "1234"),
        ("12.0 apples", "12"),
        ("She pays 5 + 7 = 12 dollars. The answer is 12.", "12"),
        ("no number here", None),
    ],
)
def test_integer(output, expected):
    assert Integer().parse(output) == expected


def test_integer_gold_with_comma_matches():
    assert Integer().is_correct("1234", "1,234")


def test_free_text_words_and_symbols():
    words = FreeText()
    assert words.parse(" apple Banana cherry.\nmore text") == "apple banana cherry"
    assert words.is_correct("$ apple banana cherry", "apple banana cherry")
    brackets = FreeText(symbols=True)
    assert brackets.is_correct(" ] ) }", "] ) }")
    assert brackets.is_correct("])}", "] ) }")
    assert not brackets.is_correct("] }", "] ) }")


def test_free_text_gold_in_multiple_choice_never_matches():
    # movie_recommendation has the gold "Monsters, Inc": no letter can match it.
    assert not ABCDE.is_correct("A", "Monsters, Inc")


def test_task_falls_back_to_the_answer_stated_in_the_reasoning():
    import tasks

    navigate = tasks.get_task("navigate")
    assert navigate.parse_answer("1.", "We end where we started, so the answer is Yes.") == "Yes"
    assert navigate.parse_answer("No", "so the answer is Yes.") == "No"  # the extractor's answer wins
    assert navigate.is_correct("1.", "No", reasoning="The answer is No.")
    assert navigate.parse_answer("1.") is None
