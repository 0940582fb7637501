"""A disk cache of generations, shared safely by concurrent processes.

Keys hash the model's checksum, the exact input and the decoding parameters (with the
sample index, so repeated samples at temperature > 0 stay distinct). SQLite in WAL
mode with a busy timeout lets several Snakemake jobs read and write one file; writes
are single ``INSERT OR IGNORE`` statements, so a crash never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_BUSY_TIMEOUT_S = 60.0


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
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
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
