"""A disk cache of generations, shared safely by concurrent processes.

Keys hash the model's checksum, the exact input and the decoding parameters (with the
sample index, so repeated samples at temperature > 0 stay distinct). Writes are single
``INSERT OR IGNORE`` transactions, so a crash never leaves half an entry.

Each optimize job has a file of its own (``generation_cache_path``): a cluster's jobs meet
on a network file system, where SQLite's WAL mode does not work and file locks are not
to be trusted. The file uses the rollback journal, which is safe there for one writer,
and a retried job finds its own earlier generations.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_BUSY_TIMEOUT_S = 60.0


def generation_cache_path(cache_dir: str | Path, task: str, model: str, optimizer: str, seed: int) -> Path:
    """The one optimize job's cache file (never shared by jobs that may run on different hosts)."""
    return Path(cache_dir) / "generations" / task / model / f"{optimizer}-seed{seed}.sqlite"


def cache_key(model_identity: str, request: object, params: dict) -> str:
    payload = json.dumps([model_identity, request, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)
            connection.execute("PRAGMA journal_mode=DELETE")
            self._local.connection = connection
        return connection

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        connection = self._connection()
        for start in range(0, len(keys), 500):  # stay under SQLite's variable limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in connection.execute(f"SELECT key, value FROM generations WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: dict[str, dict]) -> None:
        if not items:
            return
        with self._connection() as connection:
            connection.executemany(
                "INSERT OR IGNORE INTO generations (key, value) VALUES (?, ?)",
                [(key, json.dumps(value, ensure_ascii=False)) for key, value in items.items()],
            )

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM generations").fetchone()[0]
