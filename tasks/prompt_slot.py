"""The one prompt slot every method optimizes, and where the extractor goes.

The optimized text follows the question in the same user turn (GReaTer's placement),
on its own line. After the model's reasoning, the harness appends the task's extractor
text; the model's continuation of it is the answer. Evaluation uses the same layout,
so a prompt is scored the same way during optimization and at test time.
"""

from __future__ import annotations

#: between the question and the optimized prompt
SLOT_SEPARATOR = "\n"
#: between the model's reasoning and the extractor text
EXTRACTOR_SEPARATOR = " "
#: how a base model (no chat template) sees a question, in optimization and test alike
PLAIN_LAYOUT = "Question: {question}\nAnswer:"
#: a base model in the plain layout goes on to invent the next question; its reasoning ends there
PLAIN_STOP = ("\nQuestion:",)


def user_message(question: str, prompt: str) -> str:
    prompt = prompt.strip()
    return f"{question}{SLOT_SEPARATOR}{prompt}" if prompt else question


def answer_prefix(reasoning: str, extractor: str) -> str:
    """What the assistant turn holds before the answer: its reasoning, then the extractor."""
    reasoning = reasoning.strip()
    return f"{reasoning}{EXTRACTOR_SEPARATOR}{extractor}" if reasoning else extractor


def plain_context(message: str, assistant_prefix: str = "") -> str:
    """A base model's input: the plain layout, then what the assistant has written so far."""
    text = PLAIN_LAYOUT.format(question=message)
    return text + " " + assistant_prefix.lstrip() if assistant_prefix else text
