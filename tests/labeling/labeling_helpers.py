"""Helpers shared by the labelling tests (a module, not conftest, so tests can import them by name)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

SCRIPT = "<script>alert('pwned')</script>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_candidates(path: Path, n_items: int, k: int = 3) -> Path:
    rows = [{"prompt": f"Prompt {i}: review the film", "responses": [f"response {i}.{j}" for j in range(k)],
             "policy": "tiny"} for i in range(n_items)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
ITEM_RE = re.compile(r'name="item_id" value="([^"]+)"')


def csrf_of(html: str) -> str:
    return CSRF_RE.search(html).group(1)


def full_label(k: int, ranking: list[int] | None = None, likert: int = 4) -> dict:
    """Form fields for a complete label: ranking (indices best first; default 0..K-1), all scores `likert`."""
    ranking = list(range(k)) if ranking is None else ranking
    form = {f"rank_{i}": str(ranking.index(i) + 1) for i in range(k)}
    form.update({f"likert_{i}": str(likert) for i in range(k)})
    return form




def login(client, token: str) -> str:
    """Sign a TestClient / httpx client in with a login token; returns the session's CSRF token."""
    r = client.post("/login", data={"token": token}, follow_redirects=True)
    assert r.status_code == 200, r.text
    return csrf_of(r.text)
