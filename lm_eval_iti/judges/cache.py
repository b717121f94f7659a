"""A persistent cache of judgments: SQLite (WAL), one committed row per judgment.

Key: SHA-256 of (backend, judge model id, revision, judge identity, exact request text). The identity says which
weights answered: for ``hf`` the resolved hub commit, or the sha256 of the model folder's files (of the GGUF file),
plus the dtype; for API judges the redacted base URL and the server's ``/models`` entry less its volatile fields
(id, owned_by, and where listed root, parent, max_model_len ...; not ``created``, which vLLM sets on every listing).
So another server, other weights behind the same path or bf16 instead of fp32 never reuse old labels. A rerun,
or a run resumed after a crash, finds every judgment made before; a crash loses at most the requests in flight.
Only usable judgments are stored, so an unusable response is asked again next time rather than remembered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import ITIError
from .scoring import Judgment

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    revision TEXT NOT NULL,
    prompt TEXT NOT NULL,
    p_yes REAL NOT NULL,
    created REAL NOT NULL,
    identity TEXT NOT NULL DEFAULT '',
    undecided INTEGER NOT NULL DEFAULT 0
)
"""
# Columns added after the first release: files made before get them (their old keys never match a new one).
_ADDED_COLUMNS = (("identity", "TEXT NOT NULL DEFAULT ''"), ("undecided", "INTEGER NOT NULL DEFAULT 0"))


def cache_key(backend: str, model: str, revision: str, identity: str, prompt: str) -> str:
    payload = json.dumps([backend, model, revision or "", identity or "", prompt], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgmentCache:
    """``get``/``put`` by (backend, model, revision, identity, prompt); safe to share between threads."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path).expanduser()
        self._memory: dict[str, Judgment] = {}
        self._lock = threading.Lock()
        self._conn = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                             isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(_SCHEMA)
                have = {row[1] for row in self._conn.execute("PRAGMA table_info(judgments)")}
                for name, declaration in _ADDED_COLUMNS:
                    if name not in have:
                        self._conn.execute(f"ALTER TABLE judgments ADD COLUMN {name} {declaration}")
            except (sqlite3.Error, OSError) as exc:
                raise ITIError(f"judge_cache={self.path}: cannot open the SQLite cache ({exc})") from None

    def get(self, backend: str, model: str, revision: str, identity: str, prompt: str) -> Judgment | None:
        key = cache_key(backend, model, revision, identity, prompt)
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            if self._conn is None:
                return None
            row = self._conn.execute("SELECT p_yes, undecided FROM judgments WHERE key = ?", (key,)).fetchone()
        return None if row is None else Judgment(float(row[0]), undecided=bool(row[1]))

    def put(self, backend: str, model: str, revision: str, identity: str, prompt: str, judgment: Judgment) -> None:
        """Store a usable judgment and commit it at once (autocommit); unusable ones are not stored."""
        if not judgment.usable:
            return
        key = cache_key(backend, model, revision, identity, prompt)
        with self._lock:
            self._memory[key] = Judgment(float(judgment.p_yes), undecided=judgment.undecided)
            if self._conn is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO judgments (key, backend, model, revision, prompt, p_yes, created, "
                    "identity, undecided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, backend, model, revision or "", prompt, float(judgment.p_yes), time.time(),
                     identity or "", int(judgment.undecided)))

    def __len__(self) -> int:
        with self._lock:
            if self._conn is None:
                return len(self._memory)
            return int(self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
