"""Local models through transformers: one loaded copy per process, batched generation.

Generation sorts requests by length (less padding), pads on the left, decodes greedily
(or seeded sampling), stops at the model's end-of-turn tokens and at stop strings,
and runs in fp32 or bf16. ``load_model`` loads a model's weights once per process and
gives every caller an engine of its own over them (its own generation cache, batch size
and usage meter), so callers never change each other's settings. ``LocalModel`` is the
``model_engine.protocol.Engine`` that optimizers and the evaluator use.

Threads are the caller's: the entry point sets ``torch.set_num_threads`` once from the
job's threads.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from model_engine.backend import Backend, Completion, GenerationParams, as_messages, cut_at_stop
from model_engine.cache import GenerationCache
from model_engine.kv_cache import full_attention_only, preallocated_cache
from model_engine.registry import ModelSpec, get_model_spec
from model_engine.sources import PreparedModel, prepare
from model_engine.usage import UsageMeter
from tasks.prompt_slot import PLAIN_STOP, plain_context

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: whether oneDNN finds the CPU instructions that make a half-precision dtype fast (looked up when asked,
#: so that importing the engine never depends on the build's oneDNN ops)
_FAST_ON_CPU = {"bfloat16": lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                "float16": lambda: torch.ops.mkldnn._is_mkldnn_fp16_supported()}
LOG = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 64
#: end-of-turn markers of common chat templates, used as extra EOS ids when present
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>")


@dataclass(frozen=True)
class _Followup:
    """What ``chat_and_answer`` appends once a row's reasoning ends, and how the answer is decoded."""

    after_reasoning: list[int]  # the separator and the extractor
    alone: list[int]  # the extractor when there is no reasoning
    params: GenerationParams
    #: one-token choices scored at the answer's first position (``chat_and_answer``)
    choice_tokens: list[int] | None = None
    #: instead of the fixed tokens above: the ids of the whole context the answer follows, from the row
    #: (its index in the batch) and its reasoning text, or None for no answer (``complete_ids_and_answers``)
    context_of: Callable[[int, str], list[int] | None] | None = None
    #: with ``context_of``: keep the log-probabilities of the answer's first token over the whole vocabulary
    keep_logprobs: bool = False


@dataclass(frozen=True)
class Answered:
    """An answer read right after a row's reasoning (``LocalModel.complete_ids_and_answers``)."""

    context: list[int]  # the whole context the answer follows
    completion: Completion  # its prompt_tokens count the tokens computed for it past the reused states
    next_logprobs: torch.Tensor | None  # of the answer's first token, over the vocabulary (with keep_logprobs)


@dataclass(frozen=True)
class _Captured:
    """A finished row's states kept for its answer (``LocalModel._capture``)."""

    kept: list[int]  # the answer context's tokens whose states the row already has
    rest: list[int]  # the answer context's tokens still to compute
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values of ``kept``


@dataclass(frozen=True)
class TeacherForced:
    """What ``LocalModel.hidden_states`` returns."""

    hidden: torch.Tensor
    offsets: list[int]  # hidden[b, offsets[b] + p] is suffix position p of row b
    leaf: torch.Tensor | None  # the replaced input embeddings, one per row (requires grad)
    prefixed: bool  # whether the prefix cache served the prefixes (only the suffixes ran)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class LocalModel(Backend):
    """A causal LM loaded with transformers, behind the shared ``Backend`` interface."""

    def __init__(
        self,
        spec: ModelSpec,
        prepared: PreparedModel,
        model,
        tokenizer,
        dtype: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache: GenerationCache | None = None,
        meter: UsageMeter | None = None,
        preallocate_kv: bool = True,
        lock: threading.Lock | None = None,
    ):
        super().__init__(cache, meter)
        #: decode into key/value buffers sized once per batch (``model_engine.kv_cache``) instead of growing them
        self.preallocate_kv = preallocate_kv
        self.spec, self.prepared, self.model, self.tokenizer = spec, prepared, model, tokenizer
        self.dtype, self.batch_size = dtype, batch_size
        self.device = next(model.parameters()).device
        self.identity = f"{prepared.identity}:{dtype}:{self.device.type}"
        self.uses_chat_template = spec.chat and bool(getattr(tokenizer, "chat_template", None))
        self.reasoning_stop = () if self.uses_chat_template else PLAIN_STOP
        self.eos_ids = self._end_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        #: whether the network's linear layers take the small-rows form (set where the network is loaded)
        self.small_rows_linear = uses_small_rows_linear(model)
        self._lock = lock or threading.Lock()  # one generation at a time per loaded network

    @property
    def context_length(self) -> int | None:
        """The most tokens the network takes (its config's position limit; None where it states none)."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ---- prompts ---------------------------------------------------------------------
    def render(self, messages: Sequence[dict], assistant_prefix: str = "") -> str:
        """The text the model sees for a conversation, ready for the assistant's turn."""
        if self.uses_chat_template:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        else:
            user = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
            return plain_context(user, assistant_prefix)
        return text + assistant_prefix

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered text (chat templates carry their own BOS)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not self.uses_chat_template and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def complete(self, texts: Sequence[str], params: GenerationParams = GenerationParams()) -> list[Completion]:
        """Continue raw texts (e.g. a rendered chat plus reasoning plus extractor)."""
        return self._cached("text", list(texts), params, self._generate_texts)

    def complete_ids(self, sequences: Sequence[Sequence[int]], params: GenerationParams = GenerationParams()) -> list[Completion]:
        """Continue token-id sequences as they are (callers that build inputs segment by segment)."""
        return self._cached("ids", [list(ids) for ids in sequences], params, self._generate_encoded)

    def complete_ids_with_next_logprobs(self, sequences: Sequence[Sequence[int]], params: GenerationParams = GenerationParams()
                                        ) -> tuple[list[Completion], list[torch.Tensor | None]]:
        """``complete_ids``, and each sequence's log-probabilities of the token after it (the first decode step's,
        at no extra cost; None for cache hits): the log-likelihood of any one-token continuation of that context."""
        found: dict[tuple[int, ...], torch.Tensor] = {}

        def generate(missing: list[list[int]], params: GenerationParams) -> list[Completion]:
            rows: dict[int, torch.Tensor] = {}
            done = self._generate_rows([(None, ids) for ids in missing], params, None, next_logprobs=rows)
            found.update((tuple(ids), rows[i]) for i, ids in enumerate(missing))
            return done

        completions = self._cached("ids", [list(ids) for ids in sequences], params, generate)
        return completions, [found.get(tuple(ids)) for ids in sequences]

    def complete_ids_and_answers(self, sequences: Sequence[Sequence[int]], params: GenerationParams,
                                 answer_context: Callable[[list[int], str], list[int] | None],
                                 answer_params: GenerationParams, keep_logprobs: bool = False,
                                 ) -> tuple[list[Completion], list[torch.Tensor | None], list[Answered | None]]:
        """``complete_ids_with_next_logprobs``, and an answer read right after each row's reasoning.

        ``answer_context(ids, text)`` gives the whole context (ids) an answer follows, for the
        sequence ``ids`` whose reasoning came out as ``text`` (None: no answer). When a row's
        reasoning ends, its key/value states are kept as far as they agree with that context
        (a re-tokenized reasoning may split differently where it ends); once the batch's
        reasoning is done, the rest of every row's context is computed in one pass over the
        kept states and the answers are decoded greedily. An answer is what continuing that
        very context gives, without computing the question and reasoning again. Answers come
        only for generated rows (None for generation-cache hits) and only for models whose
        cache layers are all full attention (others: None, and the caller runs the context).
        """
        if not answer_params.greedy:
            raise ValueError("answers are decoded greedily; answer_params must have temperature 0")
        if not full_attention_only(self.model):
            completions, next_logprobs = self.complete_ids_with_next_logprobs(sequences, params)
            return completions, next_logprobs, [None] * len(completions)
        found: dict[tuple[int, ...], tuple[torch.Tensor | None, Answered | None]] = {}

        def generate(missing: list[list[int]], params: GenerationParams) -> list[Completion]:
            first: dict[int, torch.Tensor] = {}
            contexts: dict[int, list[int]] = {}
            followup = _Followup([], [], answer_params, keep_logprobs=keep_logprobs,
                                 context_of=lambda i, text: contexts.setdefault(i, answer_context(missing[i], text)))
            answer_logprobs: dict[int, torch.Tensor] = {}
            done = self._generate_rows([(None, ids) for ids in missing], params, None, followup, next_logprobs=first,
                                       answer_logprobs=answer_logprobs)
            for i, (ids, completion) in enumerate(zip(missing, done)):
                answered = None
                if completion.answer is not None and contexts.get(i) is not None:
                    answered = Answered(contexts[i], completion.answer, answer_logprobs.get(i))
                found[tuple(ids)] = (first.get(i), answered)
            return [replace(c, answer=None) for c in done]

        completions = self._cached("ids", [list(ids) for ids in sequences], params, generate)
        served = [found.get(tuple(ids), (None, None)) for ids in sequences]
        return completions, [logprobs for logprobs, _ in served], [answered for _, answered in served]

    def chat_and_answer(self, conversations: Sequence, params: GenerationParams, extractor: str,
                        answer_params: GenerationParams, separator: str = " ",
                        choices: Sequence[str] = ()) -> list[Completion]:
        """The reasoning of each conversation, then ``extractor`` appended and the answer, in one pass.

        When a row's reasoning ends, the extractor's tokens are fed to it and decoding goes
        on, so the answer reuses the row's key/value states instead of running the whole
        conversation again. The extractor follows the reasoning after ``separator`` (none
        when the reasoning is empty in a chat turn), as ``tasks.prompt_slot.answer_prefix``
        writes it; the reasoning's own tokens are kept as generated. Each completion is the
        reasoning, with the answer in ``.answer``. The answer is greedy.

        With ``choices`` (the continuations of a closed answer set), the answer also gets
        ``choice_logprobs``: the log-likelihood of each choice's tokens after the extractor,
        lm-eval's ``loglikelihood``. One-token choices are read in the same pass; longer
        ones, and rows whose reasoning ended at a stop string (its tokens are not kept),
        are finished by a second pass over the full sequence.
        """
        if not answer_params.greedy:
            raise ValueError("chat_and_answer decodes the answer greedily; answer_params must have temperature 0")
        keyed = [{"messages": as_messages(c), "extractor": separator + extractor, "answer": answer_params.cache_fields(),
                  "choices": list(choices)} for c in conversations]
        after_reasoning = self.continuation_ids(separator + extractor)
        alone = self.continuation_ids(extractor if self.uses_chat_template else separator + extractor)
        choice_ids = [self.answer_ids(extractor, choice) for choice in choices]
        one_token = bool(choice_ids) and all(len(ids) == 1 for ids in choice_ids)
        followup = _Followup(after_reasoning, alone, answer_params, [ids[0] for ids in choice_ids] if one_token else None)

        def generate(missing: list[dict], params: GenerationParams) -> list[Completion]:
            prompts = [self.encode(self.render(m["messages"])) for m in missing]
            done = self._generate_rows([(None, ids) for ids in prompts], params, None, followup)
            unfinished = [i for i, c in enumerate(done) if c.answer is None or (choice_ids and not one_token)]
            if unfinished:
                contexts = [prompts[i] + list(done[i].token_ids) + (after_reasoning if done[i].token_ids else alone)
                            for i in unfinished]
                scores = self.choice_loglikelihoods(contexts, choice_ids) if choice_ids else [None] * len(contexts)
                need_text = [k for k, i in enumerate(unfinished) if done[i].answer is None]
                texts = dict(zip(need_text, self._generate_encoded([contexts[k] for k in need_text], answer_params)))
                for k, i in enumerate(unfinished):
                    answer = done[i].answer if k not in texts else replace(texts[k], prompt_tokens=len(contexts[k]))
                    done[i] = replace(done[i], answer=replace(answer, choice_logprobs=scores[k]))
            return done

        return self._cached("chat+answer", keyed, params, generate)

    def continuation_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as it tokenizes after other text (no start-of-text effects)."""
        anchor = self.tokenizer(".", add_special_tokens=False)["input_ids"]
        joined = self.tokenizer("." + text, add_special_tokens=False)["input_ids"]
        if joined[: len(anchor)] == anchor:
            return joined[len(anchor):]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, context_tail: str, answer: str) -> list[int]:
        """Token ids of ``answer`` right after ``context_tail`` (an extractor), split as lm-eval does.

        lm-eval's ``loglikelihood`` encodes context + continuation as one string and takes
        the tokens past the context's own; training targets and choices use the same split.
        """
        context = self.continuation_ids(context_tail)
        whole = self.continuation_ids(context_tail + answer)
        if whole[: len(context)] == context and len(whole) > len(context):
            return whole[len(context):]
        return self.continuation_ids(answer)

    def choice_loglikelihoods(self, contexts: Sequence[Sequence[int]], choices: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """Sum of the log-probabilities of each choice's tokens after each context (teacher-forced)."""
        scored = self.loglikelihoods([(context, choice) for context in contexts for choice in choices])
        return [tuple(score for score, _ in scored[i * len(choices):(i + 1) * len(choices)]) for i in range(len(contexts))]

    def loglikelihoods(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """For (context ids, continuation ids) pairs: the continuation's summed log-probability after its
        context (teacher-forced) and whether greedy decoding would have produced it, as lm-eval's
        ``loglikelihood`` returns them. Batched by length; only the continuation's logits are computed, and
        pairs that feed the model the same tokens (the choices of one context, when each is one token)
        share one row."""
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("loglikelihoods needs a non-empty context and continuation")
        # A continuation's scores are read from the logits of context + all but its last token.
        inputs: dict[tuple[int, ...], list[int]] = {}  # model input -> the pairs read from it
        for index, (context, continuation) in enumerate(pairs):
            inputs.setdefault(tuple(context) + tuple(continuation[:-1]), []).append(index)
        rows = list(inputs)
        scores: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]), reverse=True)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                keep = max(len(pairs[i][1]) for r in chunk for i in inputs[rows[r]])
                input_ids, attention, positions, _ = self.left_pad([list(rows[r]) for r in chunk])
                logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                    logits_to_keep=keep).logits[:, -keep:, :]
                for b, r in enumerate(chunk):  # scored batch by batch: full-vocabulary log-probs are never kept
                    for i in inputs[rows[r]]:
                        continuation = list(pairs[i][1])
                        predicted = torch.log_softmax(logits[b, keep - len(continuation):].float(), dim=-1)
                        target = torch.tensor(continuation, device=predicted.device)
                        scores[i] = (float(predicted[torch.arange(len(target)), target].sum()),
                                     bool((predicted.argmax(dim=-1) == target).all()))
        return scores  # type: ignore[return-value]

    def hidden_states(self, rows: Sequence[tuple[int | None, Sequence[int], Sequence[int]]], prefix_cache=None,
                      leaf_positions: Sequence[int] | None = None) -> TeacherForced:
        """Teacher-forced last hidden states of (prefix index or None, prefix ids, suffix ids) rows, with gradients
        enabled by the caller (GReaTer's losses, their gradients with respect to one input embedding per row).

        With ``prefix_cache`` and every row's prefix index, only the suffixes run, batched as generation batches
        them (``_prefixed_inputs``). A leaf at suffix position ``leaf_positions[b]`` replaces that input embedding, so a loss's
        gradient with respect to it can be taken; ``offsets[b] + p`` is suffix position p in ``hidden``.
        """
        prefixed = prefix_cache is not None and all(index is not None for index, _, _ in rows)
        if prefixed:
            ids, attention, positions, cache = self._prefixed_inputs(prefix_cache, [(i, list(s)) for i, _, s in rows])
            offsets = [ids.shape[1] - len(suffix) for _, _, suffix in rows]  # each suffix is left-padded
        else:
            cache = None
            ids, attention, positions, pads = self.left_pad([list(prefix) + list(suffix) for _, prefix, suffix in rows])
            offsets = [pad + len(prefix) for pad, (_, prefix, _) in zip(pads, rows)]
        embeds = self.model.get_input_embeddings()(ids)  # the model's own embedding (with its scale, e.g. Gemma's)
        leaf = None
        if leaf_positions is not None:
            batch = torch.arange(len(rows), device=self.device)
            cols = torch.tensor([o + p for o, p in zip(offsets, leaf_positions)], device=self.device)
            leaf = embeds[batch, cols].detach().clone().requires_grad_(True)
            embeds = embeds.index_put((batch, cols), leaf)
        hidden = self.model.base_model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                                       past_key_values=cache, use_cache=cache is not None).last_hidden_state
        return TeacherForced(hidden, offsets, leaf, prefixed)

    def _generate_chat(self, requests: list[list[dict]], params: GenerationParams, sample_indices: list[int],
                       assistant_prefix: str) -> list[Completion]:
        # Samples differ through the batch's shared random stream (seeded by params.seed).
        return self._generate_texts([self.render(r, assistant_prefix) for r in requests], params)

    # ---- generation ------------------------------------------------------------------
    def _end_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[token] for token in _END_OF_TURN if token in vocab]
        if not ids:
            raise ValueError(f"Model {self.spec.name!r} defines no end-of-sequence token")
        return list(dict.fromkeys(ids))

    def _generate_texts(self, texts: list[str], params: GenerationParams) -> list[Completion]:
        return self._generate_encoded([self.encode(text) for text in texts], params)

    def complete_prefixed(self, prefix_cache, rows: Sequence[tuple[int, Sequence[int]]],
                          params: GenerationParams = GenerationParams()) -> list[Completion]:
        """Continue ``prefix + suffix`` for (prefix index, suffix ids) rows, reusing the prefixes' states.

        The cache key is the full token sequence, the same as ``complete_ids``'s.
        """
        sequences = [prefix_cache.prefixes[i] + list(suffix) for i, suffix in rows]
        row_of = {tuple(seq): (i, list(suffix)) for seq, (i, suffix) in zip(sequences, rows)}

        def generate(missing: list[list[int]], params: GenerationParams) -> list[Completion]:
            return self._generate_rows([row_of[tuple(seq)] for seq in missing], params, prefix_cache)

        return self._cached("ids", sequences, params, generate)

    def _generate_encoded(self, encoded: list[list[int]], params: GenerationParams) -> list[Completion]:
        return self._generate_rows([(None, ids) for ids in encoded], params, None)

    def _generate_rows(self, rows: list[tuple[int | None, list[int]]], params: GenerationParams,
                       prefix_cache, followup: _Followup | None = None,
                       next_logprobs: dict[int, torch.Tensor] | None = None,
                       answer_logprobs: dict[int, torch.Tensor] | None = None) -> list[Completion]:
        """Length-sorted batches of (prefix index or None, token ids) rows; with ``next_logprobs``, each row's
        first-step log-probabilities are stored there under its index (``answer_logprobs``: its answer's, with
        a followup that keeps them)."""
        lengths = [(len(prefix_cache.prefixes[i]) if prefix_cache is not None else 0) + len(ids) for i, ids in rows]
        order = sorted(range(len(rows)), key=lambda i: lengths[i], reverse=True)
        results: list[Completion | None] = [None] * len(rows)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = [rows[i] for i in chunk]
                if prefix_cache is None:
                    first = self._prefill_inputs([ids for _, ids in batch])
                else:
                    first = self._prefixed_inputs(prefix_cache, batch)
                first_step = [] if next_logprobs is not None else None
                batch_followup, contexts, answered = followup, None, {}
                if followup is not None and followup.context_of is not None:
                    contexts = [(prefix_cache.prefixes[i] if prefix_cache is not None else []) + list(ids) for i, ids in batch]
                    batch_followup = replace(followup, context_of=lambda b, text, chunk=chunk: followup.context_of(chunk[b], text))
                decoded = self._decode(*first, [lengths[i] for i in chunk], params, batch_followup, first_step,
                                       contexts, answered)
                for b, (index, completion) in enumerate(zip(chunk, decoded)):
                    results[index] = completion
                    if first_step:
                        next_logprobs[index] = first_step[0][b]
                    if answer_logprobs is not None and b in answered:
                        answer_logprobs[index] = answered[b]
        return results  # type: ignore[return-value]

    def left_pad(self, sequences: list[list[int]]):
        """Token ids left-padded into one batch, with attention mask, position ids and pad counts."""
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        pads = [width - len(ids) for ids in sequences]
        return input_ids.to(self.device), attention.to(self.device), positions.to(self.device), pads

    def _prefill_inputs(self, batch: list[list[int]]):
        input_ids, attention, positions, _ = self.left_pad(batch)
        return input_ids, attention, positions, None  # the decode sizes the cache

    def _prefixed_inputs(self, prefix_cache, batch):
        cache, prefix_mask, prefix_lengths = prefix_cache.assemble([i for i, _ in batch])
        input_ids, suffix_mask, suffix_positions, _ = self.left_pad([ids for _, ids in batch])
        positions = prefix_lengths[:, None] + suffix_positions
        return input_ids, torch.cat([prefix_mask, suffix_mask], dim=1), positions, cache

    def _decode(self, step_input, attention, positions, cache, prompt_lengths: list[int],
                params: GenerationParams, followup: _Followup | None = None,
                first_step: list | None = None, contexts: list[list[int]] | None = None,
                answer_logprobs: dict[int, torch.Tensor] | None = None) -> list[Completion]:
        """Decode one batch with a KV cache, dropping rows from it as they finish.

        Dropping finished rows (instead of padding them to the longest output, as
        ``model.generate`` does) keeps every step's work on rows still generating. With a
        ``followup``, a row whose reasoning ends is fed the extractor's tokens one per
        step and then writes its answer, while the other rows go on.
        """
        # Room for the longest the rows can become: the context, the reasoning, the extractor and the answer.
        capacity = attention.shape[1] + params.max_new_tokens + 1
        if followup is not None:
            capacity += len(followup.after_reasoning) + len(followup.alone) + followup.params.max_new_tokens
        if cache is None:
            cache = preallocated_cache(self.model, capacity) if self.preallocate_kv else DynamicCache()
        mask = attention.new_zeros((attention.shape[0], capacity))
        mask[:, : attention.shape[1]] = attention
        width = attention.shape[1]
        eos_ids = set(self.eos_ids)
        generator = None if params.greedy else torch.Generator(self.device).manual_seed(params.seed)
        rows = len(prompt_lengths)
        active = list(range(rows))  # original row of each live row
        outputs: list[list[int]] = [[] for _ in range(rows)]
        ended_by_eos = [False] * rows
        pending: dict[int, list[int]] = {}  # row -> extractor tokens still to feed
        fed: dict[int, int] = {}  # row -> tokens appended after the reasoning
        answers: dict[int, list[int]] = {}  # rows writing their answer
        answer_eos: set[int] = set()
        choice_logprobs: dict[int, tuple[float, ...]] = {}
        captured: dict[int, _Captured | None] = {}  # rows whose answer context follows (``followup.context_of``)
        while True:
            logits = self.model(
                input_ids=step_input,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            if first_step is not None and not first_step:  # the prefill's prediction of every row's next token
                first_step.append(torch.log_softmax(logits.float(), dim=-1))
            picked = self._pick(logits, params, generator).tolist()
            greedy = logits.argmax(dim=-1).tolist() if (pending or answers) and not params.greedy else picked
            feed, finished = list(picked), []
            for live, row in enumerate(active):
                if row in pending:
                    if pending[row]:  # still feeding the extractor; this prediction is not used
                        feed[live] = pending[row].pop(0)
                        continue
                    del pending[row]
                    answers[row] = []  # the extractor is in: this prediction is the answer's first token
                    if followup.choice_tokens:
                        log_probs = torch.log_softmax(logits[live].float(), dim=-1)
                        choice_logprobs[row] = tuple(float(log_probs[t]) for t in followup.choice_tokens)
                if row in answers:
                    token = greedy[live]
                    if token in eos_ids:
                        answer_eos.add(row)
                        finished.append(live)
                        continue
                    answers[row].append(token)
                    feed[live] = token
                    answer_params = followup.params
                    if len(answers[row]) >= answer_params.max_new_tokens or (
                            answer_params.stop and self._hits_stop(answers[row], answer_params.stop)):
                        finished.append(live)
                    continue
                token = picked[live]
                at_eos = token in eos_ids
                at_stop = False
                if at_eos:
                    ended_by_eos[row] = True
                else:
                    outputs[row].append(token)
                    at_stop = bool(params.stop) and self._hits_stop(outputs[row], params.stop)
                    if len(outputs[row]) < params.max_new_tokens and not at_stop:
                        continue  # feed[live] is the token just generated
                if followup is not None and followup.context_of is not None:
                    captured[row] = self._capture(followup, row, live, contexts[row], outputs[row], at_eos,
                                                  prompt_lengths[row], params.stop, cache, width)
                    finished.append(live)
                    continue
                if followup is None or at_stop:  # after a stop string, chat_and_answer answers in a second pass
                    finished.append(live)
                    continue
                # The reasoning is over: feed its last token (unless EOS), then the extractor.
                queue = ([] if at_eos else [token]) + (followup.after_reasoning if outputs[row] else followup.alone)
                fed[row] = len(queue)
                feed[live] = queue.pop(0)
                pending[row] = queue
            if len(finished) == len(active):
                break
            next_tokens = torch.tensor(feed, device=self.device)
            if finished:
                keep = [i for i in range(len(active)) if i not in set(finished)]
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions, next_tokens = mask[index], positions[index], next_tokens[index]
                active = [active[i] for i in keep]
            if width == mask.shape[1]:  # a cache that grew past the plan: so does the mask
                mask = torch.cat([mask, mask.new_zeros(mask.shape)], dim=1)
            mask[:, width] = 1
            width += 1
            attention = mask[:, :width]
            positions = positions[:, -1:] + 1
            step_input = next_tokens[:, None]
        if captured:
            answers = self._answer_captured(captured, followup, answer_logprobs)
        completions = []
        for row, (prompt_length, new_tokens, at_eos) in enumerate(zip(prompt_lengths, outputs, ended_by_eos)):
            completion = self._completion(new_tokens, prompt_length, at_eos, params.stop)
            if captured:
                completions.append(replace(completion, answer=answers.get(row)))
                continue
            if followup is not None and row in answers:
                answer = self._completion(answers[row], fed.get(row, 0), row in answer_eos, followup.params.stop)
                completion = replace(completion, answer=replace(answer, choice_logprobs=choice_logprobs.get(row)))
            completions.append(completion)
        return completions

    def _capture(self, followup: _Followup, row: int, live: int, context: list[int], outputs: list[int], at_eos: bool,
                 prompt_length: int, stop: tuple[str, ...], cache, width: int) -> _Captured | None:
        """A finished row's key/value states, as far as they agree with the context its answer follows
        (``followup.context_of``; None: no answer), and the tokens of that context still to compute."""
        text = self._completion(outputs, prompt_length, at_eos, stop).text
        target = followup.context_of(row, text)
        if not target:
            return None
        in_cache = context + (outputs if at_eos else outputs[:-1])  # the last token picked is not fed yet
        agree = 0
        for have, want in zip(in_cache, target):
            if have != want:
                break
            agree += 1
        agree = min(agree, len(target) - 1)  # at least one token to compute: its prediction is the answer's first
        if agree == 0:
            return None
        start = width - len(in_cache)  # the row's first column: every live row has filled the same columns
        layers = [(layer.keys[live, :, start:start + agree].clone(), layer.values[live, :, start:start + agree].clone())
                  for layer in cache.layers]
        return _Captured(target[:agree], target[agree:], layers)

    def _answer_captured(self, captured: dict[int, _Captured | None], followup: _Followup,
                         answer_logprobs: dict[int, torch.Tensor] | None) -> dict[int, Completion]:
        """The answers of the captured rows, in one batch: their kept states, then the rest of each answer
        context computed in one pass, then the answer decoded greedily."""
        from model_engine.prefix_cache import PrefixCache

        rows = [row for row, state in captured.items() if state is not None]
        if not rows:
            return {}
        states = PrefixCache(self, [captured[r].kept for r in rows], layers=[captured[r].layers for r in rows])
        first_step: list = []
        done = self._decode(*self._prefixed_inputs(states, [(k, captured[r].rest) for k, r in enumerate(rows)]),
                            [len(captured[r].kept) + len(captured[r].rest) for r in rows], followup.params, None, first_step)
        answers = {}
        for k, row in enumerate(rows):
            answers[row] = replace(done[k], prompt_tokens=len(captured[row].rest))
            if followup.keep_logprobs and answer_logprobs is not None:
                answer_logprobs[row] = first_step[0][k]
        return answers

    def _completion(self, tokens: list[int], prompt_tokens: int, at_eos: bool, stop: tuple[str, ...]) -> Completion:
        text, at_stop = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop)
        kept = list(tokens)
        if at_stop:  # the token ids of the text before the stop string, as what follows sees them
            while kept and not text.startswith(self.tokenizer.decode(kept, skip_special_tokens=True)):
                kept.pop()
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(tokens) + (1 if at_eos else 0),
                          finish_reason="stop" if at_eos or at_stop else "length", token_ids=tuple(kept))

    @staticmethod
    def _pick(logits: torch.Tensor, params: GenerationParams, generator) -> torch.Tensor:
        if params.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _hits_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        # Only the tail can contain a new stop string; decoding it is cheap.
        tail = self.tokenizer.decode(tokens[-_STOP_WINDOW:], skip_special_tokens=True)
        return any(s in tail for s in stop)


_STOP_WINDOW = 16  # tokens decoded to look for a stop string; longer stop strings need more
#: row counts at which CPU fp32 linear layers compute ``(W @ x^T)^T`` instead of ``x @ W^T``.
#: With a few rows PyTorch's CPU GEMM is slow at ``x @ W^T`` (2 or 3 rows take longer than
#: 1 or 8), while ``W @ x^T`` with ``x^T`` left a transposed view is up to 3x faster per
#: decode step: the steps of a batch's tail. ``python -m benchmarks.engine`` measures both.
SMALL_ROWS = range(2, 17)


def _small_rows_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // module.in_features
    if rows not in SMALL_ROWS:
        return torch.nn.functional.linear(x, module.weight, module.bias)
    # ``x^T`` must stay a view: a contiguous copy falls back to the slow kernel
    out = (module.weight @ x.reshape(rows, module.in_features).T).T.contiguous()
    out = out.reshape(*x.shape[:-1], module.out_features)
    return out if module.bias is None else out + module.bias


def use_small_rows_linear(model, enabled: bool = True) -> None:
    """Route the model's linear layers through ``_small_rows_linear`` (or back to their own forward)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            if enabled:
                module.forward = functools.partial(_small_rows_linear, module)
            else:
                module.__dict__.pop("forward", None)


def uses_small_rows_linear(model) -> bool:
    return any("forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear)


def warn_if_slow_dtype(name: str, device: torch.device, dtype: str) -> None:
    """Say so when a half-precision dtype runs on a CPU without the instructions for it."""
    if device.type == "cpu" and dtype in _FAST_ON_CPU and not _FAST_ON_CPU[dtype]():
        # measured on an AVX2-only host: bf16 matmuls at 0.9 GFLOP/s against 174 for fp32
        LOG.warning("%s: %s on a CPU without %s instructions runs its matmuls up to 200x slower than float32; "
                    "set runtime.dtype: float32 on this machine", name, dtype, dtype)


def default_small_rows_linear(device: torch.device | str, dtype: str) -> bool:
    """The small-rows form pays off for CPU fp32 (``benchmarks.engine`` measures it); elsewhere PyTorch's own is used."""
    return torch.device(device).type == "cpu" and dtype == "float32"


@dataclass(frozen=True)
class _Network:
    """What one process loads once per model, dtype and device, shared by every engine over it."""

    spec: ModelSpec
    prepared: PreparedModel
    model: object
    tokenizer: object
    lock: threading.Lock


_LOADED: dict[tuple, _Network] = {}
_LOAD_LOCK = threading.Lock()


def load_model(
    name_or_spec: str | ModelSpec,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    generation_cache: GenerationCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    small_rows_linear: bool | None = None,
    preallocate_kv: bool = True,
    prepared: PreparedModel | None = None,
) -> LocalModel:
    """An engine over a registered model's weights, loaded once per process (each call: a new engine, shared weights).

    Names, dtype and the model's source are checked before anything heavy is loaded.
    ``prepared`` (a workflow job: ``sources.prepared_from_record``) loads what the prepare
    step recorded instead of preparing the model here.
    ``small_rows_linear`` (default: CPU fp32 only) routes the linear layers through the
    small-rows form; it is a property of the loaded network, so it is part of what is shared.
    """
    spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else get_model_spec(name_or_spec)
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    torch_device = resolve_device(device)
    if small_rows_linear is None:
        small_rows_linear = default_small_rows_linear(torch_device, dtype)
    key = (spec, dtype, str(torch_device), small_rows_linear)
    with _LOAD_LOCK:
        network = _LOADED.get(key)
        if network is None:
            network = _LOADED[key] = _load(spec, prepared or prepare(spec, cache_dir), dtype, torch_device,
                                           small_rows_linear)
    return LocalModel(spec, network.prepared, network.model, network.tokenizer, dtype, batch_size, generation_cache,
                      preallocate_kv=preallocate_kv, lock=network.lock)


def _load(spec: ModelSpec, prepared: PreparedModel, dtype: str, device: torch.device, small_rows_linear: bool) -> _Network:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    warn_if_slow_dtype(spec.name, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(prepared.path)
    model = AutoModelForCausalLM.from_pretrained(prepared.path, dtype=DTYPES[dtype]).to(device)
    model.eval()
    model.requires_grad_(False)  # the engine never trains; gradients are taken w.r.t. inputs
    use_small_rows_linear(model, small_rows_linear)
    return _Network(spec, prepared, model, tokenizer, threading.Lock())


def from_pretrained_objects(spec: ModelSpec, model, tokenizer, dtype: str = "float32",
                            small_rows_linear: bool | None = None, **kwargs) -> LocalModel:
    """Wrap an already built model and tokenizer (tiny test models, custom checkpoints)."""
    model.eval()
    model.requires_grad_(False)
    device = next(model.parameters()).device
    warn_if_slow_dtype(spec.name, device, dtype)
    use_small_rows_linear(model, default_small_rows_linear(device, dtype) if small_rows_linear is None else small_rows_linear)
    prepared = PreparedModel(path="<in-memory>", checksum=f"in-memory:{spec.name}", source="in-memory")
    return LocalModel(spec, prepared, model, tokenizer, dtype, **kwargs)
