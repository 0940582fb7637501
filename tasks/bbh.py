"""BIG-Bench Hard: 27 tasks, one JSON file each (``bbh/<task>.json``).

Split (GReaTer's protocol): the first 50 rows train, the next 100 dev, the rest test,
in file order. causal_judgement (187 rows), snarks (178) and penguins_in_a_table (146)
are too small for that; their dev split is half of what remains after train.

Extractor texts follow GReaTer's Llama-3 table, with its gaps fixed: every option
letter that occurs as a gold answer is listed (date_understanding's F, geometric_shapes'
K), tasks the table lacks follow the same pattern, and the listed format equals the
training target's tail including spaces (``'$A'`` -> ``... is $A``; ``'$ Yes'`` ->
``... is $ Yes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from suite_errors import DataError
from tasks.answers import FreeText, Integer, Label, MultipleChoice
from tasks.base import Example, SplitIds, Task, positional_split
from tasks.data import DataFile, read_json, require_fields
from tasks import extractors

N_TRAIN, N_DEV = 50, 100
_URL = "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/bbh/{}.json"

_SHA256 = {
    "boolean_expressions": "ea6c754ec005e2d3f2d085d349a740f593b5764f32ea4638ffed4cfc0061b12a",
    "causal_judgement": "6e8bca44dd402008ed41c07a3d0a1d5e7b03db7001a7e002fcdf4c60985ea081",
    "date_understanding": "0148d4ac5fca05b2f82373e5fef7208e15363b9c6079493034d77b3dab496bf5",
    "disambiguation_qa": "cf06df9ebf911b883671cb1b35d3fbd1a1c306b19b9e9a012407e596c85fe8c6",
    "dyck_languages": "3f9badedf15c2be1ce53d94fdf016299bb30ba231ef087ab9f51a7ed6d0bdc25",
    "formal_fallacies": "4c1adb664821157faade1d4153685403afcc02648f3c180a608a18f17f589629",
    "geometric_shapes": "07be68a124420caa2ebc0b2c858ad79fc55c5c8806170e496e1e17ebfb11f31c",
    "hyperbaton": "b6d7f55c75f5d02f2987a4f3123802dfa093872089a56a334144aae8a7264fdc",
    "logical_deduction_five_objects": "d2df31394b903b7f0e085d42a69572a092987856eac076799017d70ef266fa8f",
    "logical_deduction_seven_objects": "2896c7e3482eea318dd37bcc370d24ec3cc91e8374c1784287b5dbd38a529e33",
    "logical_deduction_three_objects": "e590fae72e3a6041fbd23bd8ff6b74baf44ca563f6ba40a041c55e7b867c1681",
    "movie_recommendation": "a8b53a87ee21a865b7248e694f388a9b8f7cf6b839b11d44796a2dd3fc088983",
    "multistep_arithmetic_two": "c9d5a6433c9b78256422a15c78463949c8bec8d85607aa28b52d7234ad4a8595",
    "navigate": "b7944dfd3c81da5c4815bd75b00d6fa3c64140823498e78ed496f4c3d36f7f0d",
    "object_counting": "8acef14dbbdd40d2326ef7755750b6b5fe919fef06276af1bab3f1c297f022ff",
    "penguins_in_a_table": "bb87ee449698eee51215e025a453b1bcb2f5e6589c2063b2c79e68b8f0655228",
    "reasoning_about_colored_objects": "0a8850cf95166020fce7a78244026ceedd7ea839302471512b4f8744e85a6a49",
    "ruin_names": "b6f723aef2bafdd4c7bfc3c7e0329c7e8a8279391a609969c8ed76c9319f5f7f",
    "salient_translation_error_detection": "becf3eb8dd53c821a555ecd5c1334ecd93eb25f980e63be963c518e7138de5da",
    "snarks": "54a0661fe2de06167645a4965e6bcf963c4ba307e76262a7c750998b0e3d0d0e",
    "sports_understanding": "63ca262858f6176864515cd8cf53cdaa40839ebecc155b726d77930855d167bf",
    "temporal_sequences": "92a1189faaa84aacc4c405aaa13f13f48c2992eb884772eedb622505252baef5",
    "tracking_shuffled_objects_five_objects": "2063a46a4fb484236ed4310523606543a3e1dd4a4dc34eda65d407910ece25a5",
    "tracking_shuffled_objects_seven_objects": "b59fd05b850c37cf57cb514ae1e6975c00b1638ade2291722056b2af3c54084d",
    "tracking_shuffled_objects_three_objects": "546cc7bf10c6a01a6a4c17ae28a4966485f21f29fd5d111f37858ec78e354f6b",
    "web_of_lies": "3e60323f8514a107fdb4edf35f8832a9171c5a09c0eaa47823559de905e8ab8b",
    "word_sorting": "2a6132d2c99f00d0d2eb1113ac6b4a918bd969d863c48749210d969713db8d43",
}

# Option letters that occur as gold answers, per multiple-choice task.
_LETTERS = {
    "date_understanding": "ABCDEF",
    "disambiguation_qa": "ABC",
    "geometric_shapes": "ABCDEFGHIJK",
    "hyperbaton": "AB",
    "logical_deduction_three_objects": "ABC",
    "logical_deduction_five_objects": "ABCDE",
    "logical_deduction_seven_objects": "ABCDEFG",
    "movie_recommendation": "ABCDE",
    "penguins_in_a_table": "ABCDE",
    "reasoning_about_colored_objects": "ABCDEFGHIJKLMNOPQR",
    "ruin_names": "ABCD",
    "salient_translation_error_detection": "ABCDEF",
    "snarks": "AB",
    "temporal_sequences": "ABCD",
    "tracking_shuffled_objects_three_objects": "ABC",
    "tracking_shuffled_objects_five_objects": "ABCDE",
    "tracking_shuffled_objects_seven_objects": "ABCDEFG",
}
_LABELS = {
    "boolean_expressions": ("True", "False"),
    "causal_judgement": ("Yes", "No"),
    "navigate": ("Yes", "No"),
    "web_of_lies": ("Yes", "No"),
    "sports_understanding": ("yes", "no"),
    "formal_fallacies": ("valid", "invalid"),
}
_INTEGER_KINDS = {
    "object_counting": "a positive integer",
    "multistep_arithmetic_two": "a positive or negative integer",
}
_FREE_TEXT = {
    # task: (what the answer is, compare symbol by symbol)
    "dyck_languages": ("the closing brackets, separated by spaces", True),
    "word_sorting": ("the sorted words, separated by spaces", False),
}


@dataclass(frozen=True)
class BBHTask(Task):
    family = "bbh"

    @property
    def data_files(self) -> tuple[DataFile, ...]:
        return (DataFile(f"bbh/{self.name}.json", _SHA256[self.name], _URL.format(self.name)),)

    def _read(self, paths: dict[str, Path]) -> dict[str, list[Example]]:
        (relpath, path), = paths.items()
        document = read_json(path)
        if not isinstance(document, dict) or not isinstance(document.get("examples"), list):
            raise DataError(f"{path}: malformed file, expected an object with an 'examples' list.")
        examples = []
        for index, row in enumerate(document["examples"]):
            where = f"{path}: example {index}"
            if not isinstance(row, dict):
                raise DataError(f"{where}: malformed row, not an object.")
            require_fields(row, ("input", "target"), where)
            examples.append(Example(f"{relpath.removesuffix('.json')}#{index}", row["input"], row["target"].strip()))
        return {relpath: examples}

    def _split(self, examples: dict[str, list[Example]]) -> SplitIds:
        (rows,) = examples.values()
        return SplitIds(*map(tuple, positional_split(rows, N_TRAIN, N_DEV)))


def _make_tasks() -> list[BBHTask]:
    made = []
    for name, letters in _LETTERS.items():
        made.append(BBHTask(name, MultipleChoice(letters), extractors.multiple_choice(letters)))
    for name, labels in _LABELS.items():
        made.append(BBHTask(name, Label(labels), extractors.label(labels)))
    for name, kind in _INTEGER_KINDS.items():
        made.append(BBHTask(name, Integer(), extractors.integer(kind)))
    for name, (what, symbols) in _FREE_TEXT.items():
        made.append(BBHTask(name, FreeText(symbols=symbols), extractors.free_text(what)))
    return sorted(made, key=lambda task: task.name)


TASKS = _make_tasks()
