"""The OpenAI-compatible backend: a real server on loopback, and servers that misbehave."""

import json
import time

import pytest

from model_engine import GenerationCache, GenerationParams
from model_engine.endpoint import EndpointModel
from suite_errors import EndpointError
from tests.conftest import free_port, transformers_server
from tests.loopback import serve

FAST = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.05}


def _ok_body(path):
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Yes. STOP here"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    ).encode()


def test_parses_an_answer_and_applies_stop_strings():
    with serve(_ok_body) as (url, hits):
        endpoint = EndpointModel(url + "/v1", "m", **FAST)
        (completion,) = endpoint.chat(["Is it?"], GenerationParams(max_new_tokens=5, stop=("STOP",)))
    assert completion.text == "Yes. " and completion.finish_reason == "stop"
    assert endpoint.meter.total.prompt_tokens == 7 and endpoint.meter.total.calls == 1
    assert hits == ["/v1/chat/completions"]


def test_unreachable_endpoint_fails_clearly_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = EndpointModel(url, "m", **FAST)
    started = time.perf_counter()
    with pytest.raises(EndpointError, match=rf"endpoint {url} \(model 'm'\) failed after 3 attempts.*APIConnectionError"):
        endpoint.chat(["hi"])
    assert time.perf_counter() - started < 10
    with pytest.raises(EndpointError, match=rf"{url}.*did not answer the start-up check.*failed after 1 attempts"):
        endpoint.check()


def test_a_silent_server_fails_the_start_up_check_in_seconds():
    """A socket that accepts and never answers: the check gives up after its own short limit, once."""
    with serve(_ok_body, delay_s=30.0) as (url, hits):
        endpoint = EndpointModel(url + "/v1", "m", timeout_s=300, max_retries=3, check_timeout_s=1.0)
        started = time.perf_counter()
        with pytest.raises(EndpointError, match=r"start-up check \(a one-token request, 1 s\).*APITimeoutError"):
            endpoint.check()
        assert time.perf_counter() - started < 5
    assert len(hits) == 1
    assert EndpointModel("http://x/v1", "m", timeout_s=300).check_timeout_s == 15.0


def test_server_errors_are_retried_then_reported():
    with serve(lambda path: b'{"error": "boom"}', status=500) as (url, hits):
        with pytest.raises(EndpointError, match="failed after 3 attempts.*InternalServerError"):
            EndpointModel(url + "/v1", "m", **FAST).chat(["hi"])
    assert len(hits) == 3


def test_client_errors_fail_at_once():
    with serve(lambda path: b'{"error": {"message": "bad key"}}', status=401) as (url, hits):
        with pytest.raises(EndpointError, match="refused the request with HTTP 401"):
            EndpointModel(url + "/v1", "m", **FAST).chat(["hi"])
    assert len(hits) == 1


def test_hanging_endpoint_times_out_and_never_hangs():
    with serve(_ok_body, delay_s=3.0) as (url, hits):
        endpoint = EndpointModel(url + "/v1", "m", timeout_s=0.5, max_retries=1, backoff_s=0.01)
        started = time.perf_counter()
        with pytest.raises(EndpointError, match=r"timeout 0\.5 s each.*APITimeoutError"):
            endpoint.chat(["hi"])
        assert time.perf_counter() - started < 5
    assert len(hits) == 2


def test_garbage_response_is_retried_then_reported():
    with serve(lambda path: b'{"choices": []}') as (url, hits):
        with pytest.raises(EndpointError, match="no choices or no text"):
            EndpointModel(url + "/v1", "m", **FAST).chat(["hi"])
    assert len(hits) == 3


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("SUITE_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="API key variable SUITE_TEST_KEY is not set"):
        EndpointModel("http://127.0.0.1:1/v1", "m", api_key_env="SUITE_TEST_KEY")


@pytest.fixture(scope="module")
def real_server(smollm2, tmp_path_factory):
    with transformers_server(smollm2.prepared.path, tmp_path_factory.mktemp("server")) as server:
        yield server


@pytest.mark.server
def test_real_server_answers_and_is_cached(real_server, tmp_path):
    _, url, model_name = real_server
    endpoint = EndpointModel(url, model_name, timeout_s=120, max_retries=1, cache=GenerationCache(tmp_path / "c.sqlite"))
    endpoint.check()
    questions = ["What is 2 + 3? Answer with a number.", "Name a colour."]
    first = endpoint.chat(questions, GenerationParams(max_new_tokens=16))
    assert all(c.text.strip() for c in first)
    assert "5" in first[0].text
    assert endpoint.meter.total.calls == 2  # the check() preflight is not charged
    again = endpoint.chat(questions, GenerationParams(max_new_tokens=16))
    assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
    assert endpoint.meter.total.calls == 2


@pytest.mark.server
def test_lm_eval_local_chat_completions_evaluates_prompts_on_the_server(real_server, tmp_path):
    """The evaluate job's endpoint backend: lm-eval's own local-chat-completions model, both passes."""
    import tasks
    from evaluation.lmeval import PromptCell, evaluate_cells
    from evaluation.run import build_lm
    from tasks.heldout import load_test_examples

    _, url, model_name = real_server
    # transformers serve rejects the empty stop list lm-eval sends when it knows no end-of-turn text
    endpoint = {"base_url": url, "model": model_name, "timeout_s": 120, "eos_string": "<|im_end|>"}
    lm, description = build_lm("endpoint", "served", endpoint=endpoint)
    assert description == {"backend": "endpoint", **endpoint}
    task = tasks.get_task("navigate")
    examples = load_test_examples("navigate")[:2]
    # chat completions give no log-likelihoods: the written answer is the score (as evaluate_prompt_files sets it)
    results = evaluate_cells(lm, task, examples, [PromptCell("served__manual", "Let's think step by step.")],
                             tmp_path, max_reasoning_tokens=24, likelihood=False)
    result = results["served__manual"]
    assert result["answer_step"] == "generated" and result["accuracy"] == result["lenient_accuracy"]
    assert result["n"] == 2 and [s["id"] for s in result["samples"]] == [e.id for e in examples]
    assert all(s["reasoning"].strip() for s in result["samples"])  # the server wrote the reasoning
    assert all(s["answer"] in ("Yes", "No", "[invalid]") for s in result["samples"])
    assert result["accuracy"] == sum(s["answer"] == s["gold"] for s in result["samples"]) / 2


def test_endpoint_evaluation_checks_the_server_before_any_work():
    from evaluation.run import build_lm

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match=f"{url}.*APIConnectionError"):
        build_lm("endpoint", "served", endpoint={"base_url": url, "model": "m", "timeout_s": 2})


@pytest.mark.server
def test_real_server_stopped_gives_a_clear_error(real_server):
    process, url, model_name = real_server
    endpoint = EndpointModel(url, model_name, timeout_s=60, max_retries=1, backoff_s=0.1)
    assert endpoint.chat(["Say hi."], GenerationParams(max_new_tokens=4))[0].text
    process.terminate()
    process.wait(timeout=30)
    with pytest.raises(EndpointError, match="failed after 2 attempts.*APIConnectionError"):
        endpoint.chat(["Say hi again."], GenerationParams(max_new_tokens=4))
