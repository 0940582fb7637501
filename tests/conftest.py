"""Shared fixtures. Tests never touch the network: hub and dataset access are offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
import functools  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from model_engine.registry import ModelSpec, get_model_spec  # noqa: E402

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "Question: how many apples are left? Answer: there are 3 apples left.",
    "Therefore, the final answer is $A. Let's think step by step.",
    "Yes No True False valid invalid (A) (B) (C) 0 1 2 3 4 5 6 7 8 9",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained in memory on a few sentences (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="<|end|>")
    wrapped.chat_template = chat_template
    return wrapped


def build_tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def tiny_local_model(chat: bool = True, seed: int = 0, **kwargs):
    from model_engine.local import from_pretrained_objects

    tokenizer = build_tiny_tokenizer(CHAT_TEMPLATE if chat else None)
    spec = ModelSpec(name=f"tiny-llama-{seed}-{chat}", hf_id="none/tiny", chat=chat)
    return from_pretrained_objects(spec, build_tiny_llama(tokenizer, seed), tokenizer, **kwargs)


@functools.cache
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from model_engine.sources import prepare

    return AutoTokenizer.from_pretrained(prepare(get_model_spec("smollm2-135m")).path)


def tiny_model_with_smollm2_tokenizer(template: str | None = "own"):
    """A tiny random llama with SmolLM2's real tokenizer; ``template``: "own", another chat template, or None (base)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model_engine.local import from_pretrained_objects

    tokenizer = copy.deepcopy(smollm2_tokenizer())
    if template != "own":
        tokenizer.chat_template = template
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    spec = ModelSpec(f"tiny-smollm2-tokenizer-{template is not None}", "none/tiny", chat=template is not None)
    return from_pretrained_objects(spec, LlamaForCausalLM(config), tokenizer, batch_size=8)


def tiny_gemma3_local_model():
    """A tiny random Gemma 3: embedding scale sqrt(d), sliding-window layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from model_engine.local import from_pretrained_objects

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id)
    return from_pretrained_objects(ModelSpec("tiny-gemma", "none/tiny"), Gemma3ForCausalLM(config), tokenizer)


@pytest.fixture
def half_right(monkeypatch):
    """The harness answers every other row right (charged as usual), so every method finds errors and
    successes to learn from; longer prompts score higher."""
    from optimizers.harness import Evaluation, Harness

    def evaluate_many(self, requests):
        out = []
        for prompt, rows in requests:
            self.budget.charge_task_calls(prompt, [e.id for e in rows])
            correct = tuple(i % 2 == 0 for i in range(len(rows)))
            out.append(Evaluation(min(1.0, len(prompt) / 100), correct, ("Yes",) * len(rows), 1.0,
                                  ("I reasoned",) * len(rows)))
        return out

    monkeypatch.setattr(Harness, "evaluate_many", evaluate_many)


@pytest.fixture
def tiny_model():
    return tiny_local_model()


@pytest.fixture(scope="session")
def smollm2():
    from model_engine.local import load_model

    return load_model("smollm2-135m")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def transformers_server(model_path: str, workdir):
    """``transformers serve`` (a real OpenAI-compatible server) serving a local model on 127.0.0.1.

    Yields (process, base URL, model name); the server is stopped on exit.
    """
    port = free_port()
    log = open(Path(workdir) / "server.log", "w+")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(Path(workdir) / "hub"))
    command = [str(Path(sys.executable).parent / "transformers"), "serve", model_path,
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"transformers serve exited early:\n{log.read()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("transformers serve did not come up within 180 s")
                time.sleep(1)
        yield process, url + "/v1", model_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


FAST_TERMS = {"max_reasoning_tokens": 4, "n_dev": 4}


def optimize(name: str, options: dict | None = None, *, model=None, optimizer_model=None, budget=None, seed: int = 0,
             checkpoint=None, terms: dict | None = None, task: str = "navigate") -> dict:
    """One optimizer run through the shared contract, its result as the JSON record."""
    import tasks
    from optimizers.base import Budget, Checkpoint, get_optimizer
    from optimizers.contract import RunContext, Terms

    context = RunContext(data=tasks.load_task_data(task), task_model=model or tiny_local_model(),
                         budget=budget if budget is not None else Budget(None),
                         terms=Terms(**(FAST_TERMS if terms is None else terms)), seed=seed,
                         checkpoint=checkpoint if checkpoint is not None else Checkpoint(None),
                         optimizer_model=optimizer_model)
    return get_optimizer(name)(**(options or {})).optimize(context).model_dump(mode="json")
