"""Extractors: the fixed sentence after the model's reasoning that makes it state its
final answer, in named variants.

An extractor never ends in whitespace: chat templates that trim the assistant turn
(Llama-3's, Gemma-2's) would drop a trailing space at test time, and the model would be
asked for its answer at a different token than during optimization. The space that
separates the extractor from an answer belongs to the answer (``answer_lead``), so the
training target, the harness's answer step and lm-eval's answer pass all read the
answer at the same token boundary: ``... is $`` + ``" Yes"``.

Variants (chosen per model in the config, ``terms.extractor``; the harness applies the
same one to every method):

- ``dollar``: GReaTer's Llama-3 wording (``'$A'``, ``'$ Yes'``, ``$NUMBER$``), the default;
- ``gemma2``: the reference's Gemma-2 wording (``'$ A'`` for letters, ``**NUMBER**``);
- ``plain``: no symbols (``... (Yes or No) is`` + ``" Yes"``), for models that read a
  ``$`` as the start of a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from suite_errors import UnknownNameError

VARIANTS = ("dollar", "gemma2", "plain")
DEFAULT_VARIANT = "dollar"
_HEAD = "Therefore, the final answer"


@dataclass(frozen=True)
class Extractor:
    variant: str
    #: appended after the reasoning (after one space); never ends in whitespace
    text: str
    #: what comes between the extractor and the answer: "" or " "
    answer_lead: str = ""

    def __post_init__(self) -> None:
        if self.text != self.text.rstrip():
            raise ValueError(f"extractor {self.text!r} ends in whitespace; put the space in answer_lead")

    def continuation(self, answer: str) -> str:
        """The text that follows the extractor when the model gives ``answer``."""
        return self.answer_lead + answer


def pick(extractors: tuple[Extractor, ...], variant: str) -> Extractor:
    for extractor in extractors:
        if extractor.variant == variant:
            return extractor
    raise UnknownNameError("extractor variant", variant, [e.variant for e in extractors])


def _listed(options: list[str]) -> str:
    return " or ".join(f"'{option}'" for option in options)


def _plain_list(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def multiple_choice(letters: str) -> tuple[Extractor, ...]:
    return (
        Extractor("dollar", f"{_HEAD} (use exact format: {_listed([f'${x}' for x in letters])}) is $"),
        Extractor("gemma2", f"{_HEAD} (use exact format: {_listed([f'$ {x}' for x in letters])}) is $", " "),
        Extractor("plain", f"{_HEAD} ({_plain_list(list(letters))}) is", " "),
    )


def label(labels: tuple[str, ...]) -> tuple[Extractor, ...]:
    dollar = Extractor("dollar", f"{_HEAD} (use exact format: {_listed([f'$ {x}' for x in labels])}) is $", " ")
    return (dollar, Extractor("gemma2", dollar.text, " "), Extractor("plain", f"{_HEAD} ({_plain_list(list(labels))}) is", " "))


def integer(kind: str) -> tuple[Extractor, ...]:
    return (
        Extractor("dollar", f"{_HEAD} (use exactly this format: $NUMBER$, where NUMBER is {kind}) is $"),
        Extractor("gemma2", f"{_HEAD} (use exactly this format: **NUMBER**, where NUMBER is {kind}) is **"),
        Extractor("plain", f"{_HEAD} ({kind}) is", " "),
    )


def free_text(what: str) -> tuple[Extractor, ...]:
    dollar = Extractor("dollar", f"{_HEAD} (use exact format: '$ ' followed by {what}) is $", " ")
    return (dollar, Extractor("gemma2", dollar.text, " "), Extractor("plain", f"{_HEAD} ({what}) is", " "))
