"""GReaTer: gradient correctness, proposal logic, budget, checkpoint and resume."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tasks
from optimizers.base import Budget, Checkpoint, OptionError, get_optimizer, optimizer_names, validate_result
from optimizers.contract import RunContext, Terms
from optimizers.greater_gradient import GradientSearch, Scored, allowed_token_mask, propose_candidates
from optimizers.run import Run
from tests.conftest import (
    build_tiny_tokenizer,
    optimize,
    tiny_gemma3_local_model,
    tiny_local_model,
    tiny_model_with_smollm2_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(n_train=3, steps=2, final_candidates=2, topk=5, grad_batch_size=2)
TERMS = {"max_reasoning_tokens": 5, "n_dev": 2}
INITIAL = Terms().initial_prompt


def _run(model, **options):
    optimizer = get_optimizer("greater")(**{**SMALL, **options})
    context = RunContext(data=tasks.load_task_data("navigate"), task_model=model, budget=Budget(None), terms=Terms(**TERMS))
    return GradientSearch(optimizer.options, Run(optimizer, context))


def _greater(model=None, budget=None, seed=0, checkpoint=None, **options):
    return optimize("greater", {**SMALL, **options}, model=model, budget=budget, seed=seed, checkpoint=checkpoint,
                    terms=TERMS)


def _tiny_gemma():
    return tiny_gemma3_local_model()


def _explicit_one_hot_gradient(run, prompt, pos, candidates, reasoning, embedding_scale):
    """The textbook formulation: d loss / d one-hot, the one-hot times raw embedding rows."""
    weight = run.embed.weight.detach()
    total = torch.zeros(len(candidates))
    for example, r in zip(run.examples, reasoning):
        scored = Scored(example.prefix, list(prompt), run.tail, list(r), example)
        ids = torch.tensor([scored.prefix + scored.suffix])
        one_hot = torch.zeros(len(candidates))
        one_hot[candidates.index(prompt[pos])] = 1.0
        one_hot.requires_grad_(True)
        embeds = run.embed(ids).detach()
        row = (one_hot @ weight[candidates]) * embedding_scale
        at = len(example.prefix) + pos
        embeds = torch.cat([embeds[:, :at], row[None, None], embeds[:, at + 1:]], dim=1)
        hidden = run.net.base_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                    position_ids=torch.arange(ids.shape[1])[None]).last_hidden_state
        loss = run._loss(hidden, [scored], [len(example.prefix)], False)["objective"].sum()
        total += torch.autograd.grad(loss, one_hot)[0]
    return total


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_embedding_row_gradient_equals_one_hot_gradient(kind):
    model = tiny_local_model() if kind == "llama" else _tiny_gemma()
    run = _run(model)
    prompt, pos = run._segment(INITIAL), 2
    reasoning = run.rollouts([prompt])[0]
    allowed = torch.nonzero(run.allowed).flatten().tolist()
    candidates = sorted({prompt[pos], *allowed[:7]})
    fast = run.gradient_scores(prompt, pos, candidates, reasoning)
    scale = float(getattr(run.embed, "embed_scale", 1.0))
    if kind == "gemma":
        assert scale > 1.0, "the gemma-style model must scale its embeddings"
    explicit = _explicit_one_hot_gradient(run, prompt, pos, candidates, reasoning, scale)
    assert torch.allclose(fast, explicit, rtol=1e-4, atol=1e-6), (fast, explicit)
    assert not any(p.grad is not None for p in model.model.parameters()), "weights must stay frozen"


def test_allowed_tokens_exclude_special_and_non_word_tokens():
    tokenizer = build_tiny_tokenizer()
    mask = allowed_token_mask(tokenizer)
    for special in tokenizer.all_special_ids + list(tokenizer.get_added_vocab().values()):
        assert not mask[special]
    for token_id in torch.nonzero(mask).flatten().tolist():
        text = tokenizer.decode([token_id])
        assert text in (".", ",", " ") or all(ch.isalpha() or ch == " " for ch in text)
    assert mask.sum() > 10


def test_proposal_is_seeded_and_never_yields_excluded_tokens():
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(8, 300, generator=generator)
    excluded = torch.zeros(300, dtype=torch.bool)
    excluded[:40] = True
    log_probs[:, excluded] = float("-inf")
    first = propose_candidates(log_probs, 5, 6, 5, 6, random.Random(3))
    again = propose_candidates(log_probs, 5, 6, 5, 6, random.Random(3))
    assert first == again
    candidates, k = first
    assert len(candidates) >= 6 and k >= 5
    assert not any(excluded[c] for c in candidates)


def test_proposal_intersection_logic():
    # Two examples agree only on token 7 in their top-2; groups of both must give {7}, then k grows.
    log_probs = torch.full((2, 10), -10.0)
    log_probs[0, [7, 1]] = torch.tensor([0.0, -1.0])
    log_probs[1, [7, 2]] = torch.tensor([0.0, -1.0])
    candidates, k = propose_candidates(log_probs, 2, 3, 2, 1, random.Random(0))
    assert (candidates, k) == ([7], 2)
    candidates, k = propose_candidates(log_probs, 2, 3, 2, 3, random.Random(0))
    assert len(candidates) >= 3 and k > 2


def test_bad_options_fail_before_any_model_is_loaded():
    with pytest.raises(OptionError, match="topkk: Extra inputs are not permitted.*known options"):
        get_optimizer("greater")(topkk=3)
    with pytest.raises(OptionError, match="n_train: Input should be greater than or equal to 1"):
        get_optimizer("greater")(n_train=0)
    with pytest.raises(OptionError, match="accept: Input should be 'always' or 'improvement'"):
        get_optimizer("greater")(accept="sometimes")


def test_short_run_budget_adds_up_and_matches_schema():
    result = _greater()
    validate_result(result)
    n_train, n_dev = SMALL["n_train"], TERMS["n_dev"]
    trajectory = result["trajectory"]
    assert [r["step"] for r in trajectory] == [0, 1, 2]
    evaluated_prompts = {tuple(r["details"]["prompt_ids"]) for r in trajectory}
    assert result["budget"]["task_calls"] >= n_train * len(evaluated_prompts)
    train_calls = trajectory[-1]["task_calls"]
    dev_calls = n_dev * len(result["selection"]["candidates"])
    assert result["budget"]["task_calls"] == train_calls + dev_calls
    assert result["budget"]["backward_passes"] == n_train * SMALL["steps"]
    assert result["prompt"] in [c["prompt"] for c in result["selection"]["candidates"]]


def test_budget_stops_the_run_and_is_never_exceeded():
    result = _greater(budget=Budget(max_task_calls=30), steps=50)
    assert result["stopped"]["reason"] == "task_calls"
    assert result["budget"]["task_calls"] <= 30
    assert len(result["trajectory"]) < 50


def test_same_seed_same_prompt():
    results = []
    for _ in range(2):
        result = _greater(seed=5)
        results.append((result["prompt"], [r["prompt"] for r in result["trajectory"]]))
    assert results[0] == results[1]


def _spawn(tmp_path, name, optimizer="greater"):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    paths = [str(tmp_path / f"{name}.ckpt.json"), str(tmp_path / f"{name}.cache.sqlite"), str(tmp_path / f"{name}.json")]
    process = subprocess.Popen([sys.executable, "-m", "tests.optimizer_run", optimizer, *paths], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, paths


@pytest.mark.parametrize("optimizer", [n for n in optimizer_names() if not get_optimizer(n).fixed])
def test_killed_run_resumes_and_ends_with_the_same_prompt(tmp_path, optimizer):
    straight, (_, _, straight_out) = _spawn(tmp_path, "straight", optimizer)
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    killed, (checkpoint, _, killed_out) = _spawn(tmp_path, "killed", optimizer)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if Path(checkpoint).is_file() and json.loads(Path(checkpoint).read_text())["run"]["step"] >= 1:
            break
        assert killed.poll() is None, killed.stdout.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not Path(killed_out).exists()
    resumed, _ = _spawn(tmp_path, "killed", optimizer)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming after step" in output
    a, b = json.loads(Path(straight_out).read_text()), json.loads(Path(killed_out).read_text())
    assert b["prompt"] == a["prompt"]
    assert [r["prompt"] for r in b["trajectory"]] == [r["prompt"] for r in a["trajectory"]]
    assert b["budget"]["task_calls"] == a["budget"]["task_calls"]
    assert b["budget"]["optimizer_calls"] == a["budget"]["optimizer_calls"]


def test_checkpoint_with_other_options_is_refused(tmp_path):
    checkpoint = Checkpoint(tmp_path / "c.json")
    _greater(checkpoint=checkpoint)
    with pytest.raises(OptionError, match="belongs to a run with other options"):
        _greater(checkpoint=checkpoint, topk=6)
    with pytest.raises(OptionError, match="belongs to a run with other max_task_calls, seed"):
        _greater(checkpoint=checkpoint, seed=3, budget=Budget(500))
    with pytest.raises(OptionError, match="belongs to a run with other task_model"):
        _greater(checkpoint=checkpoint, model=tiny_local_model(seed=1))


def test_checkpoint_of_other_train_or_dev_rows_is_refused(tmp_path, monkeypatch):
    checkpoint = Checkpoint(tmp_path / "c.json")
    _greater(checkpoint=checkpoint)
    original = tasks.load_task_data

    def fewer_dev_rows(name, **kwargs):
        data = original(name, **kwargs)
        return dataclasses.replace(data, dev=data.dev[1:])

    monkeypatch.setattr(tasks, "load_task_data", fewer_dev_rows)
    with pytest.raises(OptionError, match="belongs to a run with other data"):
        _greater(checkpoint=checkpoint)


def test_prefix_cache_changes_speed_not_results():
    runs = [_greater(reuse_prefix_cache=reuse) for reuse in (True, False)]
    with_cache, without = runs
    assert [r["prompt"] for r in with_cache["trajectory"]] == [r["prompt"] for r in without["trajectory"]]
    for a, b in zip(with_cache["trajectory"], without["trajectory"]):
        assert a["details"]["loss"] == pytest.approx(b["details"]["loss"], rel=1e-4)
    assert with_cache["budget"]["task_calls"] == without["budget"]["task_calls"]
    assert with_cache["budget"]["forward_tokens"] < without["budget"]["forward_tokens"]


# ---- options for small models ---------------------------------------------------------------------
def test_restricted_error_decides_among_the_valid_answers_as_the_harness_does():
    """On a random model the full-vocabulary argmax after the extractor is never " Yes" or " No"
    (training error 1.0); decided among the valid answers, GReaTer's teacher-forced error is
    the harness's likelihood decision on the same rows."""
    from optimizers.harness import Harness
    model = tiny_model_with_smollm2_tokenizer()
    full, restricted = _run(model, n_train=8), _run(model, n_train=8, restricted_error=True)
    prompt = full._segment(INITIAL)
    assert full.evaluate([prompt], prompt)[0]["train_error"] == 1.0
    restricted_error = restricted.evaluate([prompt], prompt)[0]["train_error"]
    assert restricted_error < 1.0
    harness = Harness(tasks.get_task("navigate"), model, Budget(None), TERMS["max_reasoning_tokens"])
    assert restricted_error == 1 - harness.evaluate(INITIAL, tasks.load_task_data("navigate").train[:8]).accuracy


def test_restricted_error_on_handmade_logits():
    search = _run(tiny_model_with_smollm2_tokenizer(), n_train=1, restricted_error=True)
    yes, no = search.choice_firsts
    logits = torch.zeros(1, search.embed.weight.shape[0])
    logits[0, 7], logits[0, yes], logits[0, no] = 9.0, 2.0, 1.0  # argmax is token 7; among the answers, " Yes"
    assert not search._wrong(logits, torch.tensor([yes]))
    assert search._wrong(logits, torch.tensor([no]))


def test_restricted_error_needs_a_closed_answer_set():
    optimizer = get_optimizer("greater")(**SMALL, restricted_error=True)
    context = RunContext(data=tasks.load_task_data("object_counting"), task_model=tiny_local_model(),
                         budget=Budget(None), terms=Terms(**TERMS))
    with pytest.raises(OptionError, match="restricted_error needs a closed answer set; object_counting"):
        GradientSearch(optimizer.options, Run(optimizer, context))


def test_roundtrip_filter_drops_candidates_whose_text_tokenizes_otherwise():
    model = tiny_model_with_smollm2_tokenizer()
    search = _run(model, roundtrip_filter=True, topk=40, min_candidates=30)
    prompt = search._segment(INITIAL)
    assert search.roundtrips(prompt)
    split = search._segment("th") + search._segment("ink")  # "think" as two tokens: its text reads as one
    assert search._segment("think") != split and not search.roundtrips(split)
    unfiltered = _run(model, topk=40, min_candidates=30)
    for pos in (1, 3):
        kept, _ = search.propose(prompt, pos)
        proposed, _ = unfiltered.propose(prompt, pos)
        assert set(kept) <= set(proposed) and prompt[pos] in kept
        assert all(search.roundtrips(prompt[:pos] + [c] + prompt[pos + 1:]) for c in kept)
        dropped = set(proposed) - set(kept)
        assert all(not search.roundtrips(prompt[:pos] + [c] + prompt[pos + 1:]) for c in dropped)


def test_ties_in_the_objective_go_to_the_lower_answer_loss():
    greater = get_optimizer("greater")
    tied = [{"objective": 1.0, "answer_loss": 0.9, "train_error": 1.0}, {"objective": 1.0, "answer_loss": 0.4, "train_error": 1.0}]
    assert min(tied, key=greater(break_ties_by_answer_loss=True)._rank)["answer_loss"] == 0.4
    assert greater()._rank(tied[0]) == greater()._rank(tied[1])  # the reference sees a tie
    assert "selection ties broken by the answer cross-entropy" in greater(break_ties_by_answer_loss=True).options.deviations()
    assert greater().options.deviations() == []


def test_vocabulary_mask_is_sized_to_padded_embeddings():
    """Hub Qwen2.x checkpoints pad the embedding matrix past the tokenizer; proposals still work."""
    model = tiny_local_model()
    size = len(model.tokenizer)
    model.model.resize_token_embeddings(size + 8)
    search = _run(model)
    assert search.allowed.shape[0] == size + 8 and not search.allowed[size:].any()
    candidates, _ = search.propose(search._segment(INITIAL), 1)
    assert candidates and max(candidates) < size


@pytest.mark.parametrize("max_task_calls", [40, 70])
def test_affordable_steps_are_the_steps_a_run_makes(max_task_calls):
    """What configs are sized with (at least 12 steps in default.yaml, 125 in paper.yaml)."""
    options = {**SMALL, "steps": 1000, "period_rule": False}  # a period winner would make a step cheaper
    result = _greater(budget=Budget(max_task_calls), **options)
    steps = [s for s in result["trajectory"] if s["step"] > 0]
    guaranteed = get_optimizer("greater")(**options).affordable_steps(max_task_calls, TERMS["n_dev"])
    n_train, candidates, finals = SMALL["n_train"], 3, SMALL["final_candidates"]
    at_most = (max_task_calls - n_train - finals * TERMS["n_dev"]) // (candidates * n_train)  # no growth, no initial reserve
    assert 0 < guaranteed <= len(steps) <= at_most
    assert result["stopped"]["reason"] == "task_calls"


def test_token_edits_and_growth_stay_within_the_prompt_cap(monkeypatch):
    """terms.max_prompt_chars binds GReaTer's token edits: no edit over the cap is rolled out, and at the
    end of a prompt with no period it wraps to the start instead of growing past the cap."""
    initial = "Think"  # three tiny-tokenizer tokens, no period: at its end the search would grow it
    cap = len(initial)
    rolled_out = []
    original = GradientSearch.evaluate

    def recording(self, prompts, previous):
        rolled_out.extend(self.text(p) for p in prompts)
        return original(self, prompts, previous)

    monkeypatch.setattr(GradientSearch, "evaluate", recording)
    result = optimize("greater", {**SMALL, "steps": 6}, terms={**TERMS, "initial_prompt": initial, "max_prompt_chars": cap})
    assert len(rolled_out) > 6 and all(len(text) <= cap for text in rolled_out), rolled_out
    assert 0 in [step["details"]["position"] for step in result["trajectory"][1:]]  # wrapped at the end
    assert len(result["prompt"]) <= cap
