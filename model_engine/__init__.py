"""The model engine shared by every optimizer and by evaluation.

- ``registry``: model names -> Hugging Face ids and offline sources
- ``sources``: offline GGUF -> checked -> converted safetensors (once)
- ``local``: transformers models, batched generation (``load_model``)
- ``endpoint``: OpenAI-compatible servers with timeouts and bounded retries
- ``cache``, ``usage``: the shared generation cache and call/token/time accounting
"""

from model_engine.backend import Backend, Completion, GenerationParams
from model_engine.cache import GenerationCache
from model_engine.registry import ModelSpec, OfflineSource, get_model_spec, model_names, register_model
from model_engine.usage import Usage, UsageMeter

__all__ = [
    "Backend",
    "Completion",
    "GenerationCache",
    "GenerationParams",
    "ModelSpec",
    "OfflineSource",
    "Usage",
    "UsageMeter",
    "get_model_spec",
    "model_names",
    "register_model",
]
