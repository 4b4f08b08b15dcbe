"""The judgement cache: every answer a backend gave, in SQLite, keyed by what determines it (the judge's
identity, the template, the rendered chat and the decoding). A re-run, or a run that crashed half-way, asks the
backend only what it has not answered yet: each answer is committed the moment it arrives.

One table, `answers(key PRIMARY KEY, judge, template, answer JSON, time)`; `judge` and `template` are kept in the
clear so a cache can be inspected (`sqlite3 judgements.sqlite 'select judge, count(*) from answers group by 1'`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlhfkit.errors import RlhfkitError


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (judge, template, chat, decoding, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgementCache:
    """Answers by key. path None: kept in memory only (`--judge-cache none`)."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path).expanduser()
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(":memory:" if self.path is None else str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")  # a reader (another run) does not block the writer
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, judge TEXT, template TEXT, "
                            "answer TEXT NOT NULL, time TEXT)")
            self.db.commit()
        except (sqlite3.Error, OSError) as err:
            raise RlhfkitError(f"judgement cache {self.path}: cannot open it ({err}); pass --judge-cache PATH "
                               "elsewhere, or --judge-cache none") from None

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """The cached answers among `keys`, as stored dicts."""
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite caps the number of ? parameters
            chunk = unique[start : start + 500]
            rows = self.db.execute(f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk)
            found.update((key, json.loads(answer)) for key, answer in rows)
        return found

    def put(self, key: str, judge: str, template: str, answer: dict) -> None:
        """Store one answer and commit at once: it is paid for."""
        time = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                        (key, judge, template, json.dumps(answer, ensure_ascii=False), time))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()
