"""OpenAI-compatible endpoints (vLLM, llama.cpp server, ``transformers serve``, hosted APIs).

Every request has a timeout; connection errors, timeouts, rate limits, server errors
and empty answers are retried a bounded number of times with exponential backoff, then
fail with an ``EndpointError`` that names the endpoint, the model and the last error.
Client errors (bad request, wrong key, unknown model) fail at once. Nothing hangs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import openai

from model_engine.backend import Backend, Completion, GenerationParams, cut_at_stop
from model_engine.cache import GenerationCache
from model_engine.usage import UsageMeter
from suite_errors import EndpointError

_RETRYABLE = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
_MAX_STOP_STRINGS = 4  # the OpenAI API accepts at most four; the rest are applied locally


CHECK_TIMEOUT_S = 15.0


class EndpointModel(Backend):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        check_timeout_s: float | None = None,
        cache: GenerationCache | None = None,
        meter: UsageMeter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(cache, meter)
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_s >= 0")
        api_key = "not-needed"
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise EndpointError(f"Endpoint {base_url}: the API key variable {api_key_env} is not set.")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        #: the start-up check's own limit: a dead or silent server fails in seconds, not after every retry
        self.check_timeout_s = check_timeout_s if check_timeout_s is not None else min(timeout_s, CHECK_TIMEOUT_S)
        self.identity = f"endpoint:{self.base_url}:{model}"
        self._sleep = sleep
        # Retries are ours (bounded, logged, with our message), not the client's.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    def describe(self) -> str:
        return f"endpoint {self.base_url} (model {self.model!r})"

    def check(self) -> None:
        """One one-token request with a short timeout and no retry, to fail fast before expensive work starts."""
        try:
            self._request([{"role": "user", "content": "Say OK."}], GenerationParams(max_new_tokens=1),
                          timeout_s=self.check_timeout_s, attempts=1)
        except EndpointError as error:
            raise EndpointError(f"{self.describe()} did not answer the start-up check (a one-token request, "
                                f"{self.check_timeout_s:g} s): {error}") from error

    def _generate_chat(self, requests: list[list[dict]], params: GenerationParams, sample_indices: list[int],
                       assistant_prefix: str) -> list[Completion]:
        return [self._request(messages, params, index, assistant_prefix) for messages, index in zip(requests, sample_indices)]

    def _request(self, messages: list[dict], params: GenerationParams, sample_index: int = 0,
                 assistant_prefix: str = "", timeout_s: float | None = None, attempts: int | None = None) -> Completion:
        if assistant_prefix:  # the chat API cannot continue a reply: ask for the opening instead
            messages = messages[:-1] + [{**messages[-1], "content": messages[-1]["content"]
                                         + f'\n\nBegin your reply with "{assistant_prefix.strip()}".'}]
        arguments = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": params.seed + sample_index,
        }
        if not params.greedy:
            arguments["top_p"] = params.top_p
        if params.stop:
            arguments["stop"] = list(params.stop[:_MAX_STOP_STRINGS])
        timeout_s = timeout_s or self.timeout_s
        client = self.client if timeout_s == self.timeout_s else self.client.with_options(timeout=timeout_s)
        attempts = attempts or self.max_retries + 1
        last_error: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = client.chat.completions.create(**arguments)
            except _RETRYABLE as error:
                last_error = error
                continue
            except openai.APIStatusError as error:
                raise EndpointError(
                    f"{self.describe()} refused the request with HTTP {error.status_code}: {_short(error)}"
                ) from error
            except openai.OpenAIError as error:
                raise EndpointError(f"{self.describe()} failed: {_short(error)}") from error
            completion = _parse_response(response, params, assistant_prefix.strip())
            if completion is not None:
                return completion
            last_error = EndpointError("the response held no choices or no text")
        raise EndpointError(
            f"{self.describe()} failed after {attempts} attempts "
            f"(timeout {timeout_s:g} s each): {_short(last_error)}"
        ) from last_error


def _parse_response(response, params: GenerationParams, prefix: str = "") -> Completion | None:
    choices = getattr(response, "choices", None)
    if not choices or getattr(choices[0], "message", None) is None or choices[0].message.content is None:
        return None
    content = choices[0].message.content
    if prefix and content.lstrip().startswith(prefix):
        content = content.lstrip()[len(prefix):]
    text, at_stop = cut_at_stop(content, params.stop)
    usage = getattr(response, "usage", None)
    return Completion(
        text=text,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        finish_reason="stop" if at_stop or choices[0].finish_reason == "stop" else "length",
    )


def _short(error: Exception | None) -> str:
    text = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
    return text if len(text) < 400 else text[:400] + "..."
