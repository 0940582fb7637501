"""Integration: the text-feedback baselines with the real SmolLM2, locally and behind a real server."""

import pytest

from model_engine.endpoint import EndpointModel
from optimizers.base import Budget, Checkpoint, get_optimizer, optimizer_names, validate_result
from suite_errors import EndpointError
from tests.conftest import optimize, transformers_server

pytestmark = pytest.mark.integration

TERMS = {"max_reasoning_tokens": 24, "n_dev": 3}
BUDGET = 60  # the cap, not the schedule, ends these runs: short on a real model
TEXT_METHODS = [name for name in optimizer_names() if get_optimizer(name).uses_optimizer_llm]


def _options(name: str, **more) -> dict:
    """The method's own test options (small, with short optimizer-LLM outputs)."""
    return {**get_optimizer(name).test_options, **more}


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_self_optimization_with_smollm2(name, smollm2):
    """SmolLM2 writes the prompts and answers the questions (the paper's self-optimization)."""
    result = optimize(name, _options(name), model=smollm2, budget=Budget(BUDGET), terms=TERMS)
    validate_result(result)
    assert result["prompt"].strip()
    assert 0 < result["budget"]["task_calls"] <= BUDGET
    assert result["budget"]["optimizer_calls"] > 0
    assert result["budget"]["optimizer_model"]["completion_tokens"] > 0
    assert result["optimizer_llm"]["checksum"] == smollm2.prepared.checksum


@pytest.mark.server
def test_optimizer_behind_a_real_server_and_a_clear_error_when_it_stops(smollm2, tmp_path):
    with transformers_server(smollm2.prepared.path, tmp_path) as (process, url, model_name):
        endpoint = EndpointModel(url, model_name, timeout_s=120, max_retries=1, backoff_s=0.1)
        endpoint.check()
        result = optimize("opro", _options("opro", steps=1), model=smollm2, budget=Budget(BUDGET), terms=TERMS,
                          optimizer_model=endpoint)
        validate_result(result)
        assert result["budget"]["optimizer_calls"] == 2 and endpoint.meter.total.calls == 2
        assert result["optimizer_llm"]["source"] == "endpoint"

        # Stop the server after GPO's first step: the run fails clearly and keeps its progress.
        checkpoint = Checkpoint(tmp_path / "gpo.json")
        requests = []
        original = endpoint._request

        def stop_after_first_step(*args, **kwargs):
            requests.append(1)
            if len(requests) == 3:
                process.terminate()
                process.wait(timeout=30)
            return original(*args, **kwargs)

        endpoint._request = stop_after_first_step
        with pytest.raises(EndpointError, match=rf"endpoint {url} \(model .*\) failed after 2 attempts"):
            optimize("gpo", _options("gpo"), model=smollm2, budget=Budget(BUDGET), terms=TERMS, checkpoint=checkpoint,
                     optimizer_model=endpoint)
        saved = checkpoint.load()
        assert saved is not None and saved["run"]["step"] == 1
