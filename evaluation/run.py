"""One evaluation job: every optimized prompt of a task, on one target model, test split only.

Same-model cells (the prompt was optimized on the target) and transfer cells (optimized
on another model) come from the same job. Each prompt file
``results/prompts/{task}/{source}/{optimizer}/seed{seed}.json`` gives
``{output_dir}/{task}/{source}/{optimizer}/seed{seed}/{target}.json`` (accuracy, n, stderr, parse
rate, provenance) and a ``.samples.jsonl`` beside it with every test row's reasoning,
continuation, parsed answer and verdict.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from evaluation.lmeval import PromptCell, evaluate_cells
from tasks.extractors import DEFAULT_VARIANT
from model_engine.provenance import environment, write_json_atomic
from model_engine.sources import DEFAULT_CACHE_DIR
from optimizers.base import validate_result
from suite_errors import SuiteError
from tasks import get_task
from tasks.heldout import load_test_examples
from tasks.prompt_slot import plain_context, user_message


def output_path(output_dir: str | Path, record: dict, target: str) -> Path:
    """``{output_dir}/{task}/{source}/{optimizer}/seed{seed}/{target}.json``: the prompt's seed is its replicate.

    The names come from the prompt file (checked by the contract's name pattern); the
    path is checked again here, so no file content can place a result outside ``output_dir``.
    """
    root = Path(output_dir).resolve()
    path = (root / record["task"] / record["model"] / record["optimizer"] / f"seed{int(record['provenance']['seed'])}"
            / f"{target}.json").resolve()
    if not path.is_relative_to(root):
        raise SuiteError(f"Prompt file fields {record['task']!r}/{record['model']!r}/{record['optimizer']!r} would "
                         f"write outside {output_dir}")
    return path


def read_prompt_file(path: str | Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteError(f"Cannot read prompt file {path}: {error}") from None
    try:
        validate_result(record)
    except SuiteError as error:  # say which file breaks the contract
        raise SuiteError(f"Prompt file {path} does not follow the prompt contract: {error}") from None
    return record


def build_lm(backend: str, target: str, cache_dir=None, dtype: str = "float32", device: str = "cpu",
             batch_size: int = 64, endpoint: dict | None = None, model=None,
             vllm_options: dict | None = None) -> tuple[object, dict]:
    """An lm-eval model, loaded once for the whole job, and its description.

    ``model``: (spec, prepared) from the prepare step's record (a workflow job); without it the
    registered ``target`` is prepared here. The spec's own dtype, where it sets one, wins.
    ``vllm_options``: lm-eval's VLLM arguments (tensor_parallel_size, gpu_memory_utilization,
    max_model_len, enable_prefix_caching, ...), passed through as given.

    ``suite`` (the default for local models) is the suite's own engine registered with
    lm-eval (``evaluation.suite_lm``): the model optimized, with the same weights, dtype and
    token handling; ``hf`` and ``vllm`` are lm-eval's own model types.

    ``endpoint`` (backend "endpoint"): base_url, model, and optionally api_key_env,
    eos_string (the server's end-of-turn text; some servers, e.g. ``transformers serve``,
    reject the empty stop list lm-eval sends without it) and timeout_s. The endpoint is
    checked with a one-token request first, so a dead server fails before any work.
    """
    if backend == "endpoint":
        from lm_eval.models.openai_completions import LocalChatCompletion

        from model_engine.endpoint import EndpointModel

        probe = EndpointModel(endpoint["base_url"], endpoint["model"], api_key_env=endpoint.get("api_key_env"),
                              timeout_s=endpoint.get("timeout_s", 300), max_retries=1)
        probe.check()
        api_key = probe.client.api_key
        lm = LocalChatCompletion(base_url=endpoint["base_url"].rstrip("/") + "/chat/completions",
                                 model=endpoint["model"], tokenized_requests=False, num_concurrent=1,
                                 max_retries=endpoint.get("max_retries", 3), timeout=endpoint.get("timeout_s", 300),
                                 eos_string=endpoint.get("eos_string"), header={"Authorization": f"Bearer {api_key}"})
        return lm, {"backend": "endpoint", **endpoint}
    from model_engine.registry import get_model_spec
    from model_engine.sources import prepare

    spec, prepared = model if model is not None else (get_model_spec(target), None)
    prepared = prepared or prepare(spec, cache_dir)
    dtype = spec.dtype or dtype
    description = {"backend": backend, "name": target, "dtype": dtype, "device": device, **asdict(prepared)}
    description["chat"] = spec.chat
    if backend == "suite":
        from evaluation.suite_lm import SuiteLM
        from model_engine.local import load_model

        lm = SuiteLM(load_model(spec, dtype=dtype, device=device, cache_dir=cache_dir, batch_size=batch_size,
                                prepared=prepared))
        description["chat"] = lm.engine.uses_chat_template
        return lm, description
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        arguments = vllm_arguments(prepared.path, dtype, vllm_options or {})
        description["vllm"] = arguments
        return VLLM(**arguments), description
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=prepared.path, dtype=dtype, device=device, batch_size=batch_size)
    # A base model (or a converted one without a template) is evaluated in the plain layout it was optimized in.
    description["chat"] = description["chat"] and bool(getattr(lm.tokenizer, "chat_template", None))
    return lm, description


def vllm_arguments(path: str, dtype: str, options: dict) -> dict:
    """lm-eval's VLLM constructor arguments: the prepared weights, the run's dtype, and the config's
    ``evaluation.vllm`` options (which may not override the weights or the dtype)."""
    clash = sorted(set(options) & {"pretrained", "dtype"})
    if clash:
        raise SuiteError(f"evaluation.vllm: {', '.join(clash)} cannot be set here (the prepared model and "
                         "runtime.dtype decide them)")
    given = {key: value for key, value in options.items() if value is not None}  # null: vLLM's own default
    return {"pretrained": path, "dtype": dtype, "batch_size": "auto", **given}


def response_cache_path(cache_dir, target_description: dict, task: str) -> Path:
    """Where lm-eval keeps this evaluate job's responses (greedy, so reusable across runs).

    lm-eval keys a response by the request text and generation settings only, so the
    path carries the model's identity: its checksum and dtype, or the endpoint's address.
    One file per job (task x target): jobs on different hosts never write one database.
    """
    identity = json.dumps({key: target_description.get(key) for key in
                           ("backend", "name", "checksum", "weights_sha256", "dtype", "device", "base_url", "model")},
                          sort_keys=True)
    label = target_description.get("name") or "endpoint"
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    return root / "lmeval" / f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}" / task


#: room left for the answer after the extractor (the answer pass generates at most this many tokens)
ANSWER_ROOM = 16


def check_context_lengths(tokenizer, max_length: int | None, records: dict[str, dict], examples, max_reasoning_tokens: int,
                          extractor: str, chat: bool) -> None:
    """Refuse, before any generation, a prompt and test row that cannot fit the target's context with room for
    the reasoning, the extractor and the answer (lm-eval would otherwise cut the question away without a word)."""
    room = max_reasoning_tokens + len(tokenizer(" " + extractor, add_special_tokens=False)["input_ids"]) + ANSWER_ROOM
    longest = max(examples, key=lambda e: len(e.question))
    for path, record in records.items():
        message = user_message(longest.question, record["prompt"])
        if chat and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                                tokenize=True)
            length = len(ids if isinstance(ids, list) else ids["input_ids"])
        else:
            length = len(tokenizer(plain_context(message))["input_ids"])
        if length + room > max_length:
            raise SuiteError(
                f"Prompt file {path}: its prompt ({len(record['prompt'])} characters) with test row {longest.id} takes "
                f"{length} tokens, and with {room} more for the reasoning, extractor and answer exceeds the target's "
                f"context of {max_length} tokens; shorten the prompt or lower terms.max_reasoning_tokens")


def evaluate_prompt_files(task_name: str, target: str, records: dict[str, dict], output_dir: str, workdir: str,
                          lm, target_description: dict, split_file=None, data_root=None, limit: int | None = None,
                          max_reasoning_tokens: int = 512, extractor_variant: str = DEFAULT_VARIANT,
                          response_cache: Path | None = None) -> list[Path]:
    """``records``: prompt file path -> its record (``read_prompt_file``, read before the model loads).

    With ``response_cache``, every generated response is stored as soon as its batch
    finishes, so an interrupted job picks up where it stopped and a rerun is free.
    """
    task = get_task(task_name)
    for path, record in records.items():
        if record["task"] != task.name:
            raise SuiteError(f"Prompt file {path} is for task {record['task']!r}, not {task.name!r}")
    examples = load_test_examples(task, data_root=data_root, split_file=split_file)
    if limit:
        examples = examples[:limit]
    cells = {(r["model"], r["optimizer"], r["provenance"]["seed"]): (path, r) for path, r in records.items()}
    if len(cells) < len(records):
        raise SuiteError(f"Two prompt files of {task.name} are for the same model, method and seed")
    if target_description.get("backend") != "endpoint":  # a server reports its own limit
        check_context_lengths(lm.tokenizer, lm.max_length, records, examples, max_reasoning_tokens,
                              task.extractor(extractor_variant).text, target_description.get("chat", True))
    # A prompt shared by several files (zero-shot CoT under every seed, a run that kept the initial prompt)
    # is evaluated once.
    prompts = list(dict.fromkeys(record["prompt"] for record in records.values()))
    cell_of = {prompt: f"prompt{i}" for i, prompt in enumerate(prompts)}
    print(f"[evaluate] {task.name} on {target}: {len(cells)} prompt files ({len(prompts)} distinct prompts) x "
          f"{len(examples)} test rows", flush=True)
    by_cell = evaluate_cells(lm, task, examples, [PromptCell(name, prompt) for prompt, name in cell_of.items()],
                             Path(workdir), max_reasoning_tokens, extractor=task.extractor(extractor_variant),
                             chat=target_description.get("chat", True), response_cache=response_cache,
                             tokenizer=getattr(lm, "tokenizer", None),
                             likelihood=target_description.get("backend") != "endpoint")
    written = []
    for path, record in cells.values():
        result = copy.deepcopy(by_cell[cell_of[record["prompt"]]])
        out = output_path(output_dir, record, target)
        samples_path = out.with_suffix(".samples.jsonl")
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        samples_path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result.pop("samples")))
        write_json_atomic(out, {
            "task": task.name,
            "source_model": record["model"],
            "optimizer": record["optimizer"],
            "target_model": target,
            "seed": record["provenance"]["seed"],
            "transfer": record["model"] != target,
            "prompt": record["prompt"],
            **result,
            "samples_file": samples_path.name,
            "provenance": {
                "prompt_file": path,
                "prompt_file_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                "target": target_description,
                "split_file": str(split_file) if split_file else None,
                "max_reasoning_tokens": max_reasoning_tokens,
                "limit": limit,
                "response_cache": str(response_cache) if response_cache else None,
                "environment": environment(),
            },
        })
        print(f"[evaluate] {record['model']}/{record['optimizer']} (seed {record['provenance']['seed']}) -> {target}: "
              f"accuracy {result['accuracy']:.3f} "
              f"(n={result['n']}, {result['answer_step']} answer; written answers parsed: strict "
              f"{result['strict_parse_rate']:.2f}, lenient {result['lenient_parse_rate']:.2f})", flush=True)
        written.append(out)
    return written
