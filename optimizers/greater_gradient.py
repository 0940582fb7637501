"""GReaTer's model-facing machinery: token proposals, rollouts, gradients over reasoning
and teacher-forced scoring (see ``optimizers.greater`` for the loop and
``../shared/reference/greater_spec.md`` for the algorithm)."""

from __future__ import annotations

import math
import random
import string
import time
from dataclasses import dataclass

import torch

from model_engine import GenerationParams
from model_engine.prefix_cache import PrefixCache
from model_engine.prefix_cache import supports as prefix_cache_supported
from optimizers.base import OptionError, prompt_key
from tasks.prompt_slot import EXTRACTOR_SEPARATOR, SLOT_SEPARATOR

PLACEHOLDER = "_"
_SENTINEL = "\ue000"  # a private-use character that no chat template contains
_ALLOWED_PUNCTUATION = {".", ",", " "}


def allowed_token_mask(tokenizer, size: int | None = None) -> torch.Tensor:
    """Tokens that may be proposed: words (letters, optional spaces) and ". , space".

    Every special and added token is excluded, over the whole vocabulary (the reference
    scanned only ids 3..vocab_size, letting "!" and chat markers through). ``size`` is
    the embedding matrix's row count: rows past the tokenizer's vocabulary (padded
    embeddings, e.g. Qwen2.x checkpoints) are never proposed.
    """
    size = size if size is not None else len(tokenizer)
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    mask = torch.zeros(size, dtype=torch.bool)
    for token_id in range(min(size, len(tokenizer))):
        if token_id in excluded:
            continue
        text = tokenizer.decode([token_id])
        if not text or not set(text) <= printable:
            continue
        if text in _ALLOWED_PUNCTUATION or all(ch.isalpha() or ch == " " for ch in text) and text.strip():
            mask[token_id] = True
    return mask


def propose_candidates(log_probs: torch.Tensor, k0: int, groups: int, group_size: int, min_candidates: int,
                       rng: random.Random) -> tuple[list[int], int]:
    """Union over ``groups`` random example groups of the intersection of their top-k sets.

    ``log_probs`` is [examples, vocab] with excluded tokens at -inf. Returns the sorted
    candidate ids and the k that was used.
    """
    examples, vocab = log_probs.shape
    finite = int(torch.isfinite(log_probs).sum(dim=1).min())
    k = min(k0, finite)
    while True:
        top_sets = [set(row) for row in log_probs.topk(k, dim=1).indices.tolist()]
        candidates: set[int] = set()
        for _ in range(groups):
            group = rng.sample(range(examples), min(group_size, examples))
            candidates |= set.intersection(*(top_sets[i] for i in group))
        if len(candidates) >= min_candidates or k >= finite:
            return sorted(candidates), k
        k = min(k + 2, finite)


@dataclass
class Example:
    id: str
    index: int  # row of the run's prefix cache
    prefix: list[int]  # chat head + question + slot separator
    target: list[int]  # extractor + gold answer
    answer_start: int  # answer tokens: target[answer_start:]


@dataclass
class Scored:
    """One teacher-forced sequence: prefix, then the suffix prompt + assistant header + reasoning + target."""

    prefix: list[int]
    prompt: list[int]
    tail: list[int]
    reasoning: list[int]
    example: Example

    @property
    def suffix(self) -> list[int]:
        return self.prompt + self.tail + self.reasoning + self.example.target

    def answer_positions(self) -> list[int]:
        """Suffix positions whose logits predict the answer tokens."""
        start = len(self.prompt) + len(self.tail) + len(self.reasoning) + self.example.answer_start
        return [t - 1 for t in range(start, len(self.suffix))]

    def prompt_positions(self) -> list[int]:
        """Suffix positions whose logits predict the prompt tokens (-1: the prefix's last)."""
        return [j - 1 for j in range(len(self.prompt))]


class GradientSearch:
    """The model-facing half of GReaTer: rollouts, proposals, gradients and teacher-forced scoring.

    Built from the options and the shared run (its task data, task model, budget, random
    stream and reasoning limit); the loop itself lives in ``optimizers.greater``.
    """

    def __init__(self, options, run):
        data, model = run.data, run.model
        if options.n_train > len(data.train):
            raise OptionError(f"greater: n_train={options.n_train} but the task has {len(data.train)} train rows")
        self.o, self.model, self.budget, self.rng = options, model, run.budget, run.rng
        self.task, self.tokenizer = data.task, model.tokenizer
        self.net = model.model
        self.embed = self.net.get_input_embeddings()
        self.head = self.net.get_output_embeddings()
        self.softcap = getattr(self.net.config, "final_logit_softcapping", None)
        self.device = model.device
        head_text, tail_text = model.render([{"role": "user", "content": _SENTINEL}]).split(_SENTINEL)
        self.tail = self._segment(tail_text)
        # The answer is read where the harness reads it: after the same extractor tokens.
        self.extractor = run.harness.extractor
        self.extractor_ids = model.continuation_ids(EXTRACTOR_SEPARATOR + self.extractor.text)
        self.choice_firsts = self._choice_first_tokens(run) if options.restricted_error else None
        self.examples = [self._example(i, e, head_text) for i, e in enumerate(data.train[: options.n_train])]
        self.allowed = allowed_token_mask(self.tokenizer, self.embed.weight.shape[0]).to(self.device)
        self.placeholder = self._segment(PLACEHOLDER)[-1]
        self.slot_ids = model.continuation_ids(SLOT_SEPARATOR)
        self.drop_ids = set(model.eos_ids) | {model.pad_id}
        self.reasoning = GenerationParams(max_new_tokens=run.terms.max_reasoning_tokens, stop=model.reasoning_stop)
        self.rollout_memory: dict[str, list[tuple[int, ...]]] = {}
        self.phase_seconds = run.seconds  # the shared run reports them with the result
        # The question prefixes' key/value states, computed once and reused by every pass.
        self.prefix_cache = None
        if options.reuse_prefix_cache and prefix_cache_supported(self.net):
            started = time.perf_counter()
            self.prefix_cache = PrefixCache(model, [e.prefix for e in self.examples])
            self.budget.forward_passes += len(self.examples)
            self.budget.forward_tokens += sum(len(e.prefix) for e in self.examples)
            self.phase_seconds["prefix_cache"] += time.perf_counter() - started

    # ---- tokens -------------------------------------------------------------------------
    def _segment(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _example(self, index: int, example, head_text: str) -> Example:
        prefix = self.model.encode(head_text + example.question + SLOT_SEPARATOR)
        answer = self.model.answer_ids(self.extractor.text, self.extractor.continuation(self.task.answer_format.canonical(example.gold)))
        return Example(example.id, index, prefix, self.extractor_ids + answer, len(self.extractor_ids))

    def _choice_first_tokens(self, run) -> list[int]:
        """The first token of every valid answer after the extractor (``restricted_error``)."""
        choices = run.harness.choices
        if not choices:
            raise OptionError(f"greater: restricted_error needs a closed answer set; {self.task.name} has open answers")
        firsts = [self.model.answer_ids(self.extractor.text, choice)[0] for choice in choices]
        if len(set(firsts)) < len(firsts):
            raise OptionError(f"greater: restricted_error needs answers that differ in their first token; "
                              f"{self.task.name}'s {choices} do not with this tokenizer")
        return firsts

    def text(self, prompt: list[int]) -> str:
        return self.tokenizer.decode(prompt, skip_special_tokens=True).strip()

    def roundtrips(self, prompt: list[int]) -> bool:
        """Whether the prompt's text, in its slot, tokenizes back to these ids (what dev and test see)."""
        return self.model.continuation_ids(SLOT_SEPARATOR + self.text(prompt)) == self.slot_ids + list(prompt)

    # ---- batched model passes -----------------------------------------------------------
    def _logits_at(self, hidden: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
        """Logits only where a loss needs them (the LM head on a few positions)."""
        logits = self.head(hidden[rows, cols]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _forward(self, rows: list[tuple[Example, list[int], list[int]]], leaf_positions=None):
        """Hidden states of (example, prefix, suffix) rows (``Engine.hidden_states``); ``offsets[b] + p`` is suffix
        position p. The prefix cache serves rows whose prefix is their example's own."""
        passes = self.model.hidden_states([(e.index if prefix is e.prefix else None, prefix, suffix) for e, prefix, suffix in rows],
                                          self.prefix_cache, leaf_positions)
        self.budget.forward_tokens += sum(len(suffix) + (0 if passes.prefixed else len(prefix)) for _, prefix, suffix in rows)
        if leaf_positions is not None:
            self.budget.backward_tokens += sum(len(suffix) + (0 if passes.prefixed else len(prefix)) for _, prefix, suffix in rows)
        return passes.hidden, passes.offsets, passes.leaf, passes.prefixed

    def _row_logits(self, hidden, row: int, positions: list[int], offset: int, example: Example, prefixed: bool):
        """Logits at suffix ``positions`` of one row; position -1 under the prefix cache is stored."""
        if prefixed and positions and positions[0] < 0:
            rest = self._logits_at(hidden, [row] * (len(positions) - 1), [offset + p for p in positions[1:]])
            return torch.cat([self.prefix_cache.last_logits[example.index][None], rest])
        return self._logits_at(hidden, [row] * len(positions), [offset + p for p in positions])

    # ---- rollouts ------------------------------------------------------------------------
    def rollouts(self, prompts: list[list[int]]) -> list[list[tuple[int, ...]]]:
        """Greedy reasoning of every train example under each prompt (one batched call)."""
        missing = [p for p in dict.fromkeys(map(tuple, prompts)) if prompt_key(p) not in self.rollout_memory]
        if missing:
            started = time.perf_counter()
            for prompt in missing:
                self.budget.charge_task_calls(prompt, [e.id for e in self.examples])
            before = self.model.meter.total
            if self.prefix_cache is not None:
                rows = [(e.index, list(p) + self.tail) for p in missing for e in self.examples]
                completions = self.model.complete_prefixed(self.prefix_cache, rows, self.reasoning)
            else:
                sequences = [e.prefix + list(p) + self.tail for p in missing for e in self.examples]
                completions = self.model.complete_ids(sequences, self.reasoning)
            self.budget.task_usage = self.budget.task_usage + (self.model.meter.total - before)
            n = len(self.examples)
            for index, prompt in enumerate(missing):
                self.rollout_memory[prompt_key(prompt)] = [c.token_ids for c in completions[index * n:(index + 1) * n]]
            self.phase_seconds["rollouts"] += time.perf_counter() - started
        return [self.rollout_memory[prompt_key(p)] for p in prompts]

    # ---- 1. proposal ---------------------------------------------------------------------
    def propose(self, prompt: list[int], pos: int) -> tuple[list[int], int]:
        started = time.perf_counter()
        if pos == 0 and self.prefix_cache is not None:
            logits = self.prefix_cache.last_logits.clone()
        else:
            rows = []
            with torch.inference_mode():
                for start in range(0, len(self.examples), self.model.batch_size):
                    batch = [(e, e.prefix, prompt[:pos]) for e in self.examples[start:start + self.model.batch_size]]
                    hidden, offsets, _, prefixed = self._forward(batch)
                    rows += [self._row_logits(hidden, b, [pos - 1], offsets[b], e, prefixed) for b, (e, _, _) in enumerate(batch)]
            self.budget.forward_passes += len(self.examples)
            logits = torch.cat(rows)
        log_probs = torch.log_softmax(logits, dim=-1)
        log_probs[:, ~self.allowed] = -math.inf
        if pos > 0:
            log_probs[:, prompt[pos - 1]] = -math.inf  # never repeat the previous token
        candidates, k = propose_candidates(log_probs, self.o.topk, self.o.topq, self.o.examples_per_group,
                                           self.o.min_candidates, self.rng)
        if self.o.roundtrip_filter:
            candidates = [c for c in candidates if self.roundtrips(prompt[:pos] + [c] + prompt[pos + 1:])]
        if pos < len(prompt) and prompt[pos] not in candidates:
            candidates = sorted(candidates + [prompt[pos]])
        self.phase_seconds["proposal"] += time.perf_counter() - started
        return candidates, k

    # ---- 3-4. gradient through the embedding row -------------------------------------------
    def _scored(self, example: Example, prompt, reasoning, context: str = "clean") -> Scored:
        if context == "reference":  # bug 9: every EOS/pad id dropped from the context
            keep = lambda ids: [t for t in ids if t not in self.drop_ids]  # noqa: E731
            return Scored(keep(example.prefix), list(prompt), keep(self.tail), list(reasoning), example)
        return Scored(example.prefix, list(prompt), self.tail, list(reasoning), example)

    def gradient_scores(self, prompt: list[int], pos: int, candidates: list[int], reasoning) -> torch.Tensor:
        """d loss / d one-hot at ``pos``, for each candidate: <embedding row, d loss / d input embedding>."""
        started = time.perf_counter()
        total = torch.zeros(self.embed.weight.shape[1], dtype=torch.float32, device=self.device)
        # Micro-batches of similar length carry little padding.
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].prefix) + len(reasoning[i]))
        for start in range(0, len(order), self.o.grad_batch_size):
            batch = [self._scored(self.examples[i], prompt, reasoning[i]) for i in order[start:start + self.o.grad_batch_size]]
            with torch.enable_grad():
                hidden, offsets, leaf, prefixed = self._forward([(b.example, b.prefix, b.suffix) for b in batch],
                                                                [pos] * len(batch))
                loss = self._loss(hidden, batch, offsets, prefixed)["objective"].sum()
                (gradient,) = torch.autograd.grad(loss, leaf)
            total += gradient.float().sum(dim=0)
        self.budget.forward_passes += len(self.examples)
        self.budget.backward_passes += len(self.examples)
        with torch.no_grad():
            rows = self.embed(torch.tensor(candidates, device=self.device)).float()
        self.phase_seconds["gradient"] += time.perf_counter() - started
        return rows @ total

    def _loss(self, hidden, batch: list[Scored], offsets, prefixed: bool, ppl_targets=None) -> dict:
        """Per example: answer CE (logits / temperature), prompt NLL, teacher-forced mistake."""
        answer_ce, nll, wrong = [], [], []
        for row, (scored, offset) in enumerate(zip(batch, offsets)):
            answer_positions = scored.answer_positions()
            logits = self._row_logits(hidden, row, scored.prompt_positions() + answer_positions, offset,
                                      scored.example, prefixed)
            prompt_logits, answer_logits = logits[: len(scored.prompt)], logits[len(scored.prompt):]
            gold = torch.tensor(scored.example.target[scored.example.answer_start:], device=self.device)
            targets = torch.tensor(ppl_targets if ppl_targets is not None else scored.prompt, device=self.device)
            answer_ce.append(torch.nn.functional.cross_entropy(answer_logits / self.o.temperature, gold))
            nll.append(torch.nn.functional.cross_entropy(prompt_logits, targets))
            wrong.append(self._wrong(answer_logits, gold))
        answer_ce, nll = torch.stack(answer_ce), torch.stack(nll)
        return {"objective": answer_ce + self.o.perplexity_weight * nll, "answer_ce": answer_ce, "nll": nll, "wrong": wrong}

    def _wrong(self, answer_logits: torch.Tensor, gold: torch.Tensor) -> bool:
        """The teacher-forced mistake: argmax over the vocabulary (reference) or over the valid answers."""
        if self.choice_firsts is None:
            return bool((answer_logits.argmax(dim=-1) != gold).any())
        firsts = torch.tensor(self.choice_firsts, device=answer_logits.device)
        picked = self.choice_firsts[int(answer_logits[0, firsts].argmax())]
        return picked != int(gold[0])

    # ---- 5. candidate evaluation ---------------------------------------------------------------
    def evaluate(self, prompts: list[list[int]], previous: list[int]) -> list[dict]:
        """Training error + 0.02 x prompt NLL of each prompt, on fresh rollouts."""
        all_reasoning = self.rollouts(prompts)
        started = time.perf_counter()
        # Every (prompt, example) row in one pool, sorted by length so batches carry little padding.
        rows = [(p, self._scored(e, prompt, r, self.o.scoring_context))
                for p, (prompt, reasoning) in enumerate(zip(prompts, all_reasoning))
                for e, r in zip(self.examples, reasoning)]
        rows.sort(key=lambda row: len(row[1].prefix) + len(row[1].suffix))
        per_prompt = [{"wrong": [], "nll": [], "answer_ce": []} for _ in prompts]
        with torch.inference_mode():
            for start in range(0, len(rows), self.o.score_batch_size):
                chunk = rows[start:start + self.o.score_batch_size]
                batch = [scored for _, scored in chunk]
                hidden, offsets, _, prefixed = self._forward([(b.example, b.prefix, b.suffix) for b in batch])
                for row, (p, scored) in enumerate(chunk):
                    # reference bug 11: NLL of the old prompt's ids under the candidate
                    targets = previous if self.o.ppl_targets == "previous" and len(previous) == len(prompts[p]) else None
                    parts = self._loss(hidden[row:row + 1], [scored], offsets[row:row + 1], prefixed, targets)
                    per_prompt[p]["wrong"] += parts["wrong"]
                    per_prompt[p]["nll"] += parts["nll"].tolist()
                    per_prompt[p]["answer_ce"] += parts["answer_ce"].tolist()
        results = []
        for prompt, parts in zip(prompts, per_prompt):
            error, mean_nll = sum(parts["wrong"]) / len(parts["wrong"]), sum(parts["nll"]) / len(parts["nll"])
            results.append({"prompt": list(prompt), "train_error": error, "perplexity": mean_nll,
                            "answer_loss": sum(parts["answer_ce"]) / len(parts["answer_ce"]),
                            "objective": error + self.o.selection_perplexity_weight * mean_nll})
        self.budget.forward_passes += len(prompts) * len(self.examples)
        self.phase_seconds["evaluation"] += time.perf_counter() - started
        return results
