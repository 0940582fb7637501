"""Extractor texts: the fixed sentence after the model's reasoning that makes it state
its final answer (GReaTer's wording). The listed format equals the training target's
tail, spaces included: ``'$A'`` -> ``... is $A``, ``'$ Yes'`` -> ``... is $ Yes``.
"""

from __future__ import annotations


def _listed(options: list[str]) -> str:
    return " or ".join(f"'{option}'" for option in options)


def multiple_choice_extractor(letters: str) -> str:
    return f"Therefore, the final answer (use exact format: {_listed([f'${x}' for x in letters])}) is $"


def label_extractor(labels: tuple[str, ...]) -> str:
    return f"Therefore, the final answer (use exact format: {_listed([f'$ {x}' for x in labels])}) is $ "


def integer_extractor(kind: str) -> str:
    return (
        "Therefore, the final answer (use exactly this format: $NUMBER$, where NUMBER is "
        f"{kind}) is $"
    )


def free_text_extractor(what: str) -> str:
    return f"Therefore, the final answer (use exact format: '$ ' followed by {what}) is $ "
