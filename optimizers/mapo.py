"""MAPO: momentum-aided prompt optimization (Cui et al. 2024, arXiv 2410.19499).

ProTeGi's beam search and UCB selection with two changes (after the public code):

- **positive gradients**: each beam prompt runs on a random train minibatch;
  ``gradient_groups`` times, ``correct_per_group`` of its *correct* answers are shown to
  the optimizer LLM, which gives ``reasons_per_group`` reasons why the prompt got them
  right (<START>/<END>); each group's reasons then drive one rewrite that keeps and
  strengthens those strengths. There is no paraphrasing step.
- **momentum**: after each selection, one positive gradient of the prompts in the new
  beam is added to a memory of the last ``momentum_size`` gradients (the reference
  keeps one), shown in both meta-prompts of the next round as the strengths of past
  iterations, so the search keeps its direction instead of oscillating.

Named deviations from the public code (all recorded in each result): the momentum
gradient is drawn from every prompt of the beam (the code's loop keeps only the last
one's); ``max_expansion`` is applied (the code samples the cap and then adds
every successor anyway); "zero-shot classifier" is replaced by a neutral task
description, as in this suite's ProTeGi; a prompt with no correct answer on its
minibatch is not expanded (the code asks with an empty example list).
"""

from __future__ import annotations

from pydantic import Field

from optimizers.base import register_optimizer
from optimizers.optimizer_llm import parse_tagged
from optimizers.protegi import REASONING_CHARS, BeamOptions, ProTeGi

FRAMING = "I am writing an instruction that is added after each question to help a language model answer it."


class MAPOOptions(BeamOptions):
    gradient_groups: int = Field(8, ge=1, description="positive-gradient requests per beam prompt (the code's n_gradients)")
    correct_per_group: int = Field(3, ge=1, description="correct answers shown per positive-gradient request")
    reasons_per_group: int = Field(2, ge=1, description="reasons asked for per positive-gradient request")
    momentum_size: int = Field(1, ge=1, description="past positive gradients kept in the momentum memory")
    ucb_c: float = Field(2.0, ge=0, description="UCB exploration constant (the code's default)")

    def deviations(self) -> list[str]:
        return ["momentum gradient drawn from every beam prompt (the code keeps the last one's)",
                "max_expansion applied to each parent's successors (the code adds all of them)",
                "neutral task framing instead of 'zero-shot classifier'",
                "prompts with no correct minibatch answer are not expanded"]


def example_block(examples) -> str:
    return "\n\n".join(
        f"## Example {i + 1}\nQuestion: {e['question']}\nCorrect answer: {e['gold']}\n"
        f"Model's answer: {e['answer']}\nModel's reasoning: {e['reasoning'][:REASONING_CHARS]}"
        for i, e in enumerate(examples)
    )


def memory_block(memory: list[str]) -> str:
    return "\n".join(f"Positive feedback: {g}" for g in memory) if memory else "(none yet)"


def positive_gradient_meta_prompt(prompt: str, correct, memory: list[str], reasons: int) -> str:
    return (
        f'{FRAMING}\n\nMy current instruction is:\n"{prompt}"\n\nWith it, the model gets these examples right:\n\n'
        f"{example_block(correct)}\n\nIn addition, consider these strengths of past versions of the instruction:\n"
        f"{memory_block(memory)}\n\nBased on the above, give {reasons} reasons why the instruction could have led to "
        "these correct answers. Wrap each reason with <START> and <END>."
    )


def rewrite_meta_prompt(prompt: str, correct, gradients: list[str], memory: list[str]) -> str:
    strengths = "\n".join(f"Positive feedback {i + 1}: {g}" for i, g in enumerate(gradients))
    return (
        f'{FRAMING}\n\nMy current instruction is:\n"{prompt}"\n\nIt gets these examples right:\n\n'
        f"{example_block(correct)}\n\nBased on these examples, the strengths of the current instruction are:\n"
        f"{strengths}\n\nConsider also these strengths of past versions of the instruction:\n{memory_block(memory)}\n\n"
        "Based on the above, revise the current instruction into a new one that builds on the strengths of its "
        "wording. Wrap the new instruction with <START> and <END>."
    )


@register_optimizer("mapo")
class MAPO(ProTeGi):
    Options = MAPOOptions
    test_options = {"rounds": 2, "beam_size": 2, "minibatch": 4, "gradient_groups": 1, "bandit_rounds": 2,
                    "arms_per_round": 2, "samples_per_pull": 2, "max_tokens": 48}

    def start(self, run) -> dict:
        return {"beam": [run.initial_prompt], "means": {}, "rejected": 0, "memory": [], "feedback": {}}

    def step(self, run, state) -> None:
        super().step(run, state)
        state["feedback"] = {p: state["feedback"][p] for p in state["beam"] if p in state["feedback"]}
        gradients = [g for p in state["beam"] for g in state["feedback"].get(p, [])]
        if gradients:  # momentum: one positive gradient of the new beam joins the memory
            state["memory"] = (state["memory"] + [run.rng.choice(gradients)])[-self.options.momentum_size:]
        run.trajectory[-1].details["momentum"] = list(state["memory"])

    def expand(self, run, state) -> list[list[str]]:
        o = self.options
        outcomes = self.minibatch_errors(run, state["beam"])
        correct = {parent: [r for r in rows if r["correct"]] for parent, rows in outcomes.items()}
        learning = [parent for parent in outcomes if correct[parent]]
        groups = [(parent, run.rng.sample(correct[parent], min(o.correct_per_group, len(correct[parent]))))
                  for parent in learning for _ in range(o.gradient_groups)]
        if not groups:
            return []
        feedback = run.llm.sample_many([positive_gradient_meta_prompt(p, g, state["memory"], o.reasons_per_group)
                                        for p, g in groups], 1, o.temperature, o.max_tokens)
        gradients = [parse_tagged(text, "<START>", "<END>")[: o.reasons_per_group] for (text,) in feedback]
        state["rejected"] += sum(not g for g in gradients)
        usable = [(parent, group, g) for (parent, group), g in zip(groups, gradients) if g]
        children: dict[str, list[str]] = {parent: [] for parent in learning}
        if usable:
            rewritten = run.llm.sample_many([rewrite_meta_prompt(p, group, g, state["memory"]) for p, group, g in usable],
                                            1, o.temperature, o.max_tokens)
            for (parent, _, g), (text,) in zip(usable, rewritten):
                parsed = parse_tagged(text, "<START>", "<END>")[:1]
                state["rejected"] += not parsed
                for child in parsed:
                    if child != parent and child not in children[parent]:
                        children[parent].append(child)
                        state["feedback"][child] = g  # the strengths this child was built on
        return [self.limit(run, children[parent]) for parent in learning]
