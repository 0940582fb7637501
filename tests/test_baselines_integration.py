"""Integration: the text-feedback baselines with the real SmolLM2, locally and behind a real server."""

import random

import pytest

import tasks
from model_engine.endpoint import EndpointModel
from optimizers.base import Budget, Checkpoint, get_optimizer, validate_result
from suite_errors import EndpointError
from tests.conftest import transformers_server

pytestmark = pytest.mark.integration

SHORT = {"max_reasoning_tokens": 24, "n_dev": 3}
OPTIONS = {
    "ape": {**SHORT, "proposal_requests": 1, "proposals_per_request": 3, "screen_examples": 2, "rescore_top": 2, "max_tokens": 24},
    "opro": {**SHORT, "steps": 1, "samples_per_step": 2, "final_candidates": 2, "max_tokens": 48},
    "protegi": {**SHORT, "rounds": 1, "beam_size": 2, "minibatch": 3, "gradient_groups": 1, "bandit_rounds": 1,
                "arms_per_round": 2, "samples_per_pull": 2, "paraphrases": 1, "max_tokens": 48},
    "gpo": {**SHORT, "epochs": 1, "batch_size": 25, "candidates_per_step": 2, "max_tokens": 48},
}
BUDGET = 120


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_self_optimization_with_smollm2(name, smollm2):
    """SmolLM2 writes the prompts and answers the questions (the paper's self-optimization)."""
    data = tasks.load_task_data("navigate")
    result = get_optimizer(name)(**OPTIONS[name]).optimize(data, smollm2, Budget(BUDGET), random.Random(0),
                                                           Checkpoint(None), seed=0)
    validate_result(result)
    assert result["prompt"].strip()
    assert 0 < result["budget"]["task_calls"] <= BUDGET
    assert result["budget"]["optimizer_calls"] > 0
    assert result["budget"]["optimizer_model"]["completion_tokens"] > 0
    assert result["provenance"]["optimizer_model"]["checksum"] == smollm2.prepared.checksum


@pytest.mark.server
def test_optimizer_behind_a_real_server_and_a_clear_error_when_it_stops(smollm2, tmp_path):
    data = tasks.load_task_data("navigate")
    with transformers_server(smollm2.prepared.path, tmp_path) as (process, url, model_name):
        endpoint = EndpointModel(url, model_name, timeout_s=120, max_retries=1, backoff_s=0.1)
        endpoint.check()
        result = get_optimizer("opro")(**OPTIONS["opro"]).optimize(
            data, smollm2, Budget(BUDGET), random.Random(0), Checkpoint(None), optimizer_model=endpoint
        )
        validate_result(result)
        assert result["budget"]["optimizer_calls"] == 2 and endpoint.meter.total.calls == 2
        assert result["provenance"]["optimizer_model"]["source"] == "endpoint"

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
            get_optimizer("gpo")(**{**OPTIONS["gpo"], "epochs": 2}).optimize(
                data, smollm2, Budget(BUDGET), random.Random(0), checkpoint, optimizer_model=endpoint
            )
        saved = checkpoint.load()
        assert saved is not None and saved["state"]["step"] == 1
