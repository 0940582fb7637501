"""What optimizers and the evaluator may use of a local model: the engine boundary.

``Backend`` (``model_engine.backend``) is what every model offers, endpoints included:
``chat`` with caching and a usage meter; that is all the text methods' optimizer LLM
needs. A task model is a local ``Engine``: the harness's fused reasoning-and-answer
pass, token-level completion (with the lm-eval model's answers read after the reasoning), teacher-forced scoring, and, for GReaTer, the network
itself (gradients with respect to input embeddings need it). ``model_engine.local.LocalModel``
implements it; ``tests/test_engine_protocol.py`` runs the harness, GReaTer and the
lm-eval model through a proxy that exposes nothing else, so a new use must be added here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from model_engine.backend import Completion, Conversation, GenerationParams
from model_engine.registry import ModelSpec
from model_engine.sources import PreparedModel
from model_engine.usage import UsageMeter


@runtime_checkable
class Engine(Protocol):
    # ---- what the model is -------------------------------------------------------------
    spec: ModelSpec
    prepared: PreparedModel
    #: weights checksum, dtype and device: what cache keys and provenance name
    identity: str
    dtype: str
    device: torch.device
    #: the transformers network and tokenizer (GReaTer's gradients; lm-eval's chat template)
    model: torch.nn.Module
    tokenizer: object
    uses_chat_template: bool
    #: strings that end a reasoning (a base model's plain layout stops at the next question)
    reasoning_stop: tuple[str, ...]
    eos_ids: list[int]
    pad_id: int
    #: rows per forward pass; calls, tokens and seconds spent (cache hits apart)
    batch_size: int
    meter: UsageMeter
    #: the most tokens one input may take (None: not stated)
    context_length: int | None

    # ---- text and tokens -----------------------------------------------------------------
    def render(self, messages: Sequence[dict], assistant_prefix: str = "") -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def continuation_ids(self, text: str) -> list[int]: ...

    def answer_ids(self, context_tail: str, answer: str) -> list[int]: ...

    # ---- generation (cached; usage recorded on ``meter``) ----------------------------------
    def chat(self, conversations: Sequence[Conversation], params: GenerationParams = ...,
             sample_indices: Sequence[int] | None = None, assistant_prefix: str = "") -> list[Completion]: ...

    def complete(self, texts: Sequence[str], params: GenerationParams = ...) -> list[Completion]: ...

    def complete_ids(self, sequences: Sequence[Sequence[int]], params: GenerationParams = ...) -> list[Completion]: ...

    def complete_ids_with_next_logprobs(self, sequences: Sequence[Sequence[int]], params: GenerationParams = ...
                                        ) -> tuple[list[Completion], list[torch.Tensor | None]]: ...

    def complete_ids_and_answers(self, sequences: Sequence[Sequence[int]], params: GenerationParams,
                                 answer_context: Callable[[list[int], str], list[int] | None],
                                 answer_params: GenerationParams, keep_logprobs: bool = False,
                                 ) -> tuple[list[Completion], list[torch.Tensor | None], list]: ...

    def complete_prefixed(self, prefix_cache, rows: Sequence[tuple[int, Sequence[int]]],
                          params: GenerationParams = ...) -> list[Completion]: ...

    def chat_and_answer(self, conversations: Sequence, params: GenerationParams, extractor: str,
                        answer_params: GenerationParams, separator: str = " ",
                        choices: Sequence[str] = ()) -> list[Completion]: ...

    # ---- teacher-forced passes -------------------------------------------------------------
    def loglikelihoods(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]: ...

    def choice_loglikelihoods(self, contexts: Sequence[Sequence[int]],
                              choices: Sequence[Sequence[int]]) -> list[tuple[float, ...]]: ...

    def left_pad(self, sequences: list[list[int]]): ...

    def hidden_states(self, rows: Sequence[tuple[int | None, Sequence[int], Sequence[int]]], prefix_cache=None,
                      leaf_positions: Sequence[int] | None = None): ...
