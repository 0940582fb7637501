"""The suite's engine as an lm-eval model (``--model suite``), registered through lm-eval's registry.

lm-eval keeps what it owns (task configs, chat templating and ``gen_prefix``, filters,
metrics, the response cache); the engine does the model work with the same weights,
dtype and token handling as optimization: generation in length-sorted batches that drop
finished rows, and teacher-forced log-likelihoods that compute logits only over the
continuation. Requests are run in chunks sorted by length, and every chunk's results go
to lm-eval's response cache as soon as they exist (``CacheHook.add_partial``), so an
interrupted job resumes where it stopped.

The answer pass costs almost nothing when the evaluator announces it
(``expect_answer_pass``): while a row's reasoning is generated, the engine goes on
into the very context lm-eval's answer pass will send (the same text, encoded the same
way) and reads the answer there, reusing the row's key/value states; the answer pass's
requests with exactly those token ids and settings are then served from memory (and
their one-token choices from the answer's first step). Any other request runs as usual.

From lm-eval's own command line: ``lm_eval --model suite --model_args
pretrained=smollm2-135m,dtype=float32 ...`` (``import evaluation.suite_lm`` first
registers it); the evaluate job hands it the already loaded engine.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import resolve_max_length

from model_engine.backend import GenerationParams
from suite_errors import SuiteError

log = logging.getLogger("evaluation.suite_lm")

#: ``generate_until`` keyword arguments the engine understands (others are refused, not ignored)
_GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "seed"}
_DEFAULT_MAX_GEN_TOKS = 256
#: requests per progress line and per partial write to the response cache (a multiple of the batch)
_CHUNK_BATCHES = 4


@register_model("suite")
class SuiteLM(TemplateLM):
    """An lm-eval model backed by a ``model_engine.local.LocalModel``."""

    def __init__(self, engine=None, pretrained: str | None = None, dtype: str = "float32", device: str = "cpu",
                 batch_size: int | str = "auto", cache_dir: str | None = None, max_batch_size: int | None = None,
                 answer_with_reasoning: bool = True, **unused):
        super().__init__()
        if unused:
            raise SuiteError(f"suite model: unknown argument(s) {', '.join(sorted(unused))}; it takes pretrained, "
                             "dtype, device, batch_size, max_batch_size, cache_dir, answer_with_reasoning")
        if engine is None:
            if not pretrained:
                raise SuiteError("suite model: give pretrained=<registered model name>")
            from model_engine.local import DEFAULT_BATCH_SIZE, load_model

            # lm-eval's command line passes batch_size "auto" (and max_batch_size) by default: the engine's own size
            rows = DEFAULT_BATCH_SIZE if str(batch_size).startswith("auto") else int(batch_size)
            engine = load_model(pretrained, dtype=dtype, device=device or "cpu", cache_dir=cache_dir,
                                batch_size=min(rows, int(max_batch_size)) if max_batch_size else rows)
        self.engine = engine
        self.tokenizer = engine.tokenizer
        #: context ids -> next-token log-probabilities from the last generate_until call: lm-eval's answer pass
        #: asks for the one-token choices after the very contexts it just generated from, which these answer free
        self._next_logprobs: dict[tuple[int, ...], object] = {}
        #: whether an announced answer pass is read during the reasoning (off: every request runs as sent)
        self.answer_with_reasoning = str(answer_with_reasoning).lower() not in ("false", "0", "no")
        #: answer-pass requests served from what was read during the reasoning, over this model's life
        self.answers_served = 0
        #: announced by ``expect_answer_pass``: (reasoning context, reasoning) -> answer context, and its settings
        self._answer_plan: tuple[Callable[[str, str], str | None], GenerationParams, bool] | None = None
        #: (answer context ids, settings) -> (answer, its first-step log-probabilities), read during the reasoning
        self._answers: dict[tuple[tuple[int, ...], GenerationParams], tuple[str, object]] = {}
        self.max_length = resolve_max_length(engine.model.config, engine.tokenizer)  # as lm-eval's hf

    def expect_answer_pass(self, answer_context: Callable[[str, str], str | None] | None, gen_kwargs: dict | None = None,
                           keep_logprobs: bool = False) -> None:
        """Announce the answer pass: ``answer_context(context, reasoning)`` is the context lm-eval will send
        for the answer after a reasoning request's ``context`` came out as ``reasoning`` (None: none), and
        ``gen_kwargs`` its generation settings; ``keep_logprobs`` when one-token choices will be scored there.
        ``answer_context=None``: no answer pass is expected any more (what was kept is dropped)."""
        self._answer_plan = None if answer_context is None or not self.answer_with_reasoning else (
            answer_context, self._params(gen_kwargs or {}), keep_logprobs)
        self._answers = {}

    # ---- what lm-eval asks of a model ------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.engine.eos_ids[0]

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.engine.spec.name

    @property
    def device(self):
        return self.engine.device

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if self.engine.uses_chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        # As lm-eval's ``hf`` model: a ``gen_prefix`` arrives as a final assistant message to continue.
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The engine's own encoding (what optimization fed the model) unless special tokens are set explicitly."""
        if add_special_tokens is None:
            return self.engine.encode(string)
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = []
        for (context, continuation), context_ids, continuation_ids in requests:
            self._check_length(len(context_ids) + len(continuation_ids), context)
            pairs.append((context_ids, continuation_ids))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        for i, (context_ids, continuation_ids) in enumerate(pairs):
            known = self._next_logprobs.get(tuple(context_ids)) if len(continuation_ids) == 1 else None
            if known is not None:
                token = continuation_ids[0]
                results[i] = (float(known[token]), int(known.argmax()) == token)
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        # Long sequences first, as the engine batches them; chunks report progress and reach the cache early.
        order = sorted((i for i in range(len(pairs)) if results[i] is None),
                       key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        progress = _Progress("loglikelihood", len(order))
        for chunk in _chunks(order, self.engine.batch_size * _CHUNK_BATCHES):
            for i, score in zip(chunk, self.engine.loglikelihoods([pairs[i] for i in chunk]), strict=True):
                results[i] = score
                self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
            progress.advance(len(chunk), sum(len(pairs[i][0]) + len(pairs[i][1]) for i in chunk))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise SuiteError("suite model: loglikelihood_rolling (perplexity tasks) is not supported; "
                         "use the hf backend for such tasks")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or seeded sampled) continuations, cut at the first ``until`` string, in request order."""
        groups: dict[GenerationParams, list[int]] = defaultdict(list)
        encoded = []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            params = self._params(gen_kwargs)
            ids = self.engine.encode(context)
            self._check_length(len(ids) + params.max_new_tokens, context)
            encoded.append(ids)
            groups[params].append(index)
        results: list[str | None] = [None] * len(requests)
        self._next_logprobs = {}
        for params, members in groups.items():
            served = [i for i in members if (tuple(encoded[i]), params) in self._answers]
            for i in served:  # answers read while their reasoning was generated
                results[i], logprobs = self._answers.pop((tuple(encoded[i]), params))
                if logprobs is not None:
                    self._next_logprobs[tuple(encoded[i])] = logprobs
                self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
            self.answers_served += len(served)
            if served:
                log.info("generate_until: %d/%d requests read during the reasoning pass", len(served), len(members))
            order = sorted((i for i in members if results[i] is None), key=lambda i: len(encoded[i]), reverse=True)
            progress = _Progress("generate_until", len(order))
            for chunk in _chunks(order, self.engine.batch_size * _CHUNK_BATCHES):
                completions, next_logprobs = self._generate([requests[i].args[0] for i in chunk],
                                                            [encoded[i] for i in chunk], params)
                for i, completion, logprobs in zip(chunk, completions, next_logprobs, strict=True):
                    results[i] = completion.text
                    if logprobs is not None:
                        self._next_logprobs[tuple(encoded[i])] = logprobs
                    self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
                progress.advance(len(chunk), sum(c.completion_tokens for c in completions))
        return results  # type: ignore[return-value]

    def _generate(self, contexts: list[str], encoded: list[list[int]], params: GenerationParams):
        """The engine's completions and next-token log-probabilities; with an announced answer pass, each
        row's answer is read right after its reasoning and kept for that pass."""
        if self._answer_plan is None:
            return self.engine.complete_ids_with_next_logprobs(encoded, params)
        answer_context, answer_params, keep_logprobs = self._answer_plan
        context_of = {tuple(ids): context for ids, context in zip(encoded, contexts)}

        def answer_ids(ids: list[int], reasoning: str) -> list[int] | None:
            text = answer_context(context_of[tuple(ids)], reasoning)
            return self.engine.encode(text) if text is not None else None

        completions, next_logprobs, answers = self.engine.complete_ids_and_answers(
            encoded, params, answer_ids, answer_params, keep_logprobs)
        for answered in answers:
            if answered is not None:
                self._answers[(tuple(answered.context), answer_params)] = (answered.completion.text,
                                                                          answered.next_logprobs)
        return completions, next_logprobs

    # ---- checks ----------------------------------------------------------------------
    def _params(self, gen_kwargs: dict) -> GenerationParams:
        unknown = set(gen_kwargs) - _GENERATION_KEYS
        if unknown:
            raise SuiteError(f"suite model: generation argument(s) {', '.join(sorted(unknown))} are not supported "
                             f"(supported: {', '.join(sorted(_GENERATION_KEYS))})")
        until = gen_kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        sampled = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature", 1.0)) > 0
        return GenerationParams(max_new_tokens=int(gen_kwargs.get("max_gen_toks", _DEFAULT_MAX_GEN_TOKS)), stop=until,
                                temperature=float(gen_kwargs.get("temperature", 1.0)) if sampled else 0.0,
                                top_p=float(gen_kwargs.get("top_p", 1.0)), seed=int(gen_kwargs.get("seed", 0)))

    def _check_length(self, tokens: int, context: str) -> None:
        """lm-eval's ``hf`` cuts an over-long context from the left without a word; refuse it instead."""
        if self.max_length and tokens > self.max_length:
            raise SuiteError(f"suite model: a request needs {tokens} tokens, more than {self.engine.spec.name}'s context of "
                             f"{self.max_length}; it begins {context[:80]!r}")


def _chunks(items: list[int], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Progress:
    """One log line per chunk: requests done, and tokens per second."""

    def __init__(self, kind: str, total: int):
        self.kind, self.total, self.done, self.tokens, self.started = kind, total, 0, 0, time.perf_counter()

    def advance(self, requests: int, tokens: int) -> None:
        self.done += requests
        self.tokens += tokens
        seconds = time.perf_counter() - self.started
        log.info("%s: %d/%d requests, %.0f tokens/s", self.kind, self.done, self.total, self.tokens / max(seconds, 1e-9))
