"""A scripted optimizer LLM: deterministic canned responses, and a record of what it was asked."""

from __future__ import annotations

import itertools

from model_engine.backend import Backend, Completion


class ScriptedLLM(Backend):
    """Answers each request with ``respond(message, counter)``; keeps every message it saw."""

    def __init__(self, respond=None):
        super().__init__()
        self.identity = "scripted"
        self.model = "scripted"
        self.messages: list[str] = []
        self._counter = itertools.count()
        self.respond = respond or default_response

    def _generate_chat(self, requests, params, sample_indices, assistant_prefix):
        out = []
        for messages in requests:
            message = messages[-1]["content"]
            self.messages.append(message)
            text = self.respond(message, next(self._counter))
            out.append(Completion(text=text, prompt_tokens=len(message.split()), completion_tokens=len(text.split()),
                                  finish_reason="stop"))
        return out


WORDS = ["carefully", "slowly", "logically", "precisely", "calmly", "clearly", "briefly", "exactly", "boldly", "simply"]


def default_response(message: str, n: int) -> str:
    """A new, distinct instruction in whatever format the meta-prompt asks for."""
    instruction = f"Think {WORDS[n % len(WORDS)]} and check step {n}."
    if "<INS>" in message:
        return f"Here it is: <INS>{instruction}</INS>"
    if "<START>" in message:
        return f"<START>{instruction}<END>"
    return instruction
