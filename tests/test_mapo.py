"""MAPO's loop on a scripted optimizer LLM: positive gradients, the momentum memory, the beam, UCB."""

import re

from tests.conftest import optimize
from tests.scripted import ScriptedLLM

OPTIONS = {"rounds": 3, "beam_size": 2, "minibatch": 6, "gradient_groups": 2, "correct_per_group": 2,
           "bandit_rounds": 3, "arms_per_round": 3, "samples_per_pull": 4}


def _respond(message: str, n: int) -> str:
    if "give 2 reasons why" in message:
        return f"<START>strength {n}: it asks for care<END> <START>strength {n}b: it is short<END>"
    return f"<START>Reason carefully, then answer; variant {n} keeps the strengths.<END>"


def test_positive_gradients_momentum_and_beam(half_right):
    llm = ScriptedLLM(_respond)
    result = optimize("mapo", OPTIONS, optimizer_model=llm)
    gradient_requests = [m for m in llm.messages if "give 2 reasons why" in m]
    rewrite_requests = [m for m in llm.messages if "revise the current instruction" in m]
    assert gradient_requests and len(rewrite_requests) == len(gradient_requests)
    # Only correct answers are shown: the positive gradient is about what went right.
    assert all("gets these examples right" in m and "wrong" not in m for m in gradient_requests)
    assert all(len(re.findall(r"## Example \d", m)) <= OPTIONS["correct_per_group"] for m in gradient_requests)
    # Round 1 has no memory yet; later rounds show the momentum gradient from the beam in both meta-prompts.
    first_round = gradient_requests[: OPTIONS["gradient_groups"]]
    assert all("(none yet)" in m for m in first_round)
    steps = result["trajectory"][1:]
    memory = steps[0]["details"]["momentum"]
    assert len(memory) == 1 and memory[0].startswith("Strength")
    later = [m for m in llm.messages[2 * OPTIONS["gradient_groups"]:] if "Positive feedback: " in m]
    assert later and all(f"Positive feedback: {memory[0]}" in m for m in later[: OPTIONS["gradient_groups"]])
    # The beam keeps its width; the bandit's estimates are on train samples.
    for step in steps:
        assert len(step["details"]["beam"]) <= OPTIONS["beam_size"]
        assert step["split"] in ("train", None)
    assert len(steps[-1]["details"]["beam"]) == OPTIONS["beam_size"]
    assert result["deviations"] and result["optimizer_llm"]["name"] == "scripted"


def test_momentum_memory_keeps_the_last_gradients(half_right):
    result = optimize("mapo", {**OPTIONS, "momentum_size": 2}, optimizer_model=ScriptedLLM(_respond))
    memories = [s["details"]["momentum"] for s in result["trajectory"][1:]]
    assert [len(m) for m in memories] == [1, 2, 2]
    assert memories[1][0] == memories[0][0] and memories[2][0] == memories[1][1]  # a sliding window
