"""Where benchmark files live, and how they are read, checked and (optionally) fetched.

The data root is, in order: the ``data_root`` argument, the ``PROMPT_SUITE_DATA``
environment variable, the offline mirror ``../shared/data`` next to the project, or
``~/.cache/prompt-suite/data``. A file missing from the root is fetched from its
upstream address only when downloads are allowed (``allow_download=True`` and
``HF_DATASETS_OFFLINE`` unset); a fetched file must match its pinned sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from suite_errors import ChecksumError, DataError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OFFLINE_MIRROR = PROJECT_ROOT.parent / "shared" / "data"
DOWNLOAD_CACHE = Path.home() / ".cache" / "prompt-suite" / "data"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class DataFile:
    """One upstream benchmark file: its path under the data root, sha256 and source."""

    relpath: str
    sha256: str
    url: str


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DataError(f"Data root {root} does not exist or is not a directory.")
        return root.resolve()
    if os.environ.get("PROMPT_SUITE_DATA"):
        return resolve_data_root(os.environ["PROMPT_SUITE_DATA"])
    if OFFLINE_MIRROR.is_dir():
        return OFFLINE_MIRROR.resolve()
    return DOWNLOAD_CACHE


def downloads_allowed(allow_download: bool) -> bool:
    return allow_download and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("1", "true", "TRUE")


def sha256_file(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(file: DataFile, root: Path, allow_download: bool = True) -> Path:
    """The path of ``file`` under ``root``, fetched first if missing and allowed."""
    path = root / file.relpath
    if path.is_file():
        return path
    if not downloads_allowed(allow_download):
        raise DataError(
            f"Missing data file {path}. Point the data root at a folder that holds "
            f"'{file.relpath}' (argument data_root or PROMPT_SUITE_DATA), or allow downloads "
            f"(unset HF_DATASETS_OFFLINE) to fetch it from {file.url}."
        )
    return fetch(file, root)


def fetch(file: DataFile, root: Path) -> Path:
    """Download ``file`` into ``root`` atomically and check its sha256."""
    target = root / file.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(file.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as error:
            os.unlink(tmp.name)
            raise DataError(f"Could not download {file.url} for '{file.relpath}': {error}") from error
    actual = sha256_file(Path(tmp.name))
    if actual != file.sha256:
        os.unlink(tmp.name)
        raise ChecksumError(file.url, file.sha256, actual)
    os.replace(tmp.name, target)
    return target


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields (line number, record); a bad line raises an error naming file and line."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: malformed row, not valid JSON ({error.msg}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number}: malformed row, expected a JSON object.")
            yield line_number, record


def read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}:{error.lineno}: malformed file, not valid JSON at column {error.colno} ({error.msg})."
        ) from None


def require_fields(record: dict, fields: tuple[str, ...], where: str) -> None:
    for name in fields:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: malformed row, field '{name}' is missing or empty.")
