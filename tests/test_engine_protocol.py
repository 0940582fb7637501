"""The engine boundary: optimizers, the harness and the lm-eval model use nothing a ``model_engine.protocol.Engine`` lacks."""

import pytest

from evaluation.suite_lm import SuiteLM
from model_engine.local import LocalModel, load_model
from model_engine.protocol import Engine
from optimizers.base import get_optimizer, optimizer_names
from tests.conftest import optimize, tiny_local_model
from tests.scripted import ScriptedLLM

MEMBERS = set(Engine.__annotations__) | {name for name, value in vars(Engine).items()
                                         if callable(value) and not name.startswith("_")}


class StrictEngine:
    """A local engine seen only through the protocol: any other attribute is an error naming it."""

    def __init__(self, engine):
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name):
        if name not in MEMBERS:
            raise AttributeError(f"{name!r} is not part of model_engine.protocol.Engine")
        return getattr(self._engine, name)

    def __setattr__(self, name, value):
        if name not in MEMBERS:
            raise AttributeError(f"setting {name!r}: not part of model_engine.protocol.Engine")
        setattr(self._engine, name, value)


def test_the_local_engine_implements_the_protocol():
    engine = tiny_local_model()
    assert isinstance(engine, Engine) and isinstance(engine, LocalModel)
    assert {"chat_and_answer", "loglikelihoods", "complete_prefixed", "model", "meter"} <= MEMBERS


@pytest.mark.parametrize("name", optimizer_names())
def test_every_optimizer_runs_through_the_protocol_alone(name):
    options = get_optimizer(name).test_options
    strict = optimize(name, options, model=StrictEngine(tiny_local_model()), optimizer_model=ScriptedLLM(stateless=True), seed=3)
    plain = optimize(name, options, model=tiny_local_model(), optimizer_model=ScriptedLLM(stateless=True), seed=3)
    assert strict["prompt"] == plain["prompt"] and strict["budget"]["task_calls"] == plain["budget"]["task_calls"]


def test_the_lm_eval_model_runs_through_the_protocol_alone():
    from tests.test_suite_lm import _Request

    engine = tiny_local_model()
    lm = SuiteLM(StrictEngine(engine))
    context = engine.render([{"role": "user", "content": "Yes or No?"}], "So the answer is")
    assert lm.generate_until([_Request(context, {"until": ["\n"], "max_gen_toks": 3})]) == \
        SuiteLM(engine).generate_until([_Request(context, {"until": ["\n"], "max_gen_toks": 3})])
    assert lm.loglikelihood([_Request(context, " Yes")]) == SuiteLM(engine).loglikelihood([_Request(context, " Yes")])


def test_each_load_gets_its_own_engine_over_shared_weights(tmp_path):
    """No process-wide state: one caller's cache, batch size and meter are not another's."""
    from model_engine import GenerationCache

    first = load_model("smollm2-135m", batch_size=8, generation_cache=GenerationCache(tmp_path / "a.sqlite"))
    second = load_model("smollm2-135m", batch_size=32)
    assert first.model is second.model and first._lock is second._lock  # weights loaded once
    assert (first.batch_size, second.batch_size) == (8, 32)
    assert first.cache is not None and second.cache is None and first.meter is not second.meter
