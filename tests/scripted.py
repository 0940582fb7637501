"""A scripted optimizer LLM: deterministic canned responses, and a record of what it was asked."""

from __future__ import annotations

import itertools
import zlib

from model_engine.backend import Backend, Completion


class ScriptedLLM(Backend):
    """Answers each request with ``respond(message, counter)``; keeps every message it saw."""

    def __init__(self, respond=None, stateless: bool = False):
        super().__init__()
        #: stateless: answers depend only on the request (message and sample index), so a
        #: resumed run hears what an uninterrupted one heard
        self.stateless = stateless
        self.identity = "scripted"
        self.model = "scripted"
        self.messages: list[str] = []
        self._counter = itertools.count()
        self.respond = respond or default_response

    def _generate_chat(self, requests, params, sample_indices, assistant_prefix):
        out = []
        for messages, sample in zip(requests, sample_indices):
            message = messages[-1]["content"]
            self.messages.append(message)
            key = zlib.crc32(message.encode()) + sample if self.stateless else next(self._counter)
            text = self.respond(message, key)
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
