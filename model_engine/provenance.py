"""What produced a result: package versions, machine, and atomic JSON writing."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "lm_eval", "openai", "snakemake", "datasets", "gguf", "prompt-optimizer-bench")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "packages": package_versions()}


def write_json_atomic(path: str | os.PathLike, record: dict) -> Path:
    """Write JSON so that a reader never sees half a file (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(record, tmp, indent=1)
    os.replace(tmp.name, path)
    return path
