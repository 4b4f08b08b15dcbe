"""Helpers shared by the labelling tests (a module, not conftest, so tests can import them by name)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.labeling.web import load_candidates
from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.app import create_app

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
    """Sign a TestClient / httpx client in as a browser does: fetch the login form (it sets the login CSRF
    cookie and carries the same value), then post the token with it. Returns the session's CSRF token."""
    form = client.get("/login")
    r = client.post("/login", data={"csrf": csrf_of(form.text), "token": token}, follow_redirects=True)
    assert r.status_code == 200, r.text
    return csrf_of(r.text)


def shown_item(client) -> str | None:
    """The item GET /label offers this client (None on the 'all done' page); the page view records the offer."""
    found = ITEM_RE.search(client.get("/label").text)
    return found.group(1) if found else None



class Env:
    """A database holding the `candidates` items, its admin token, and the app over it (for TestClient)."""

    def __init__(self, url: str, candidates: Path, labels_per_item: int = 2, **app_options):
        self.url = url
        self.engine = db.open_db(url)
        load_candidates(self.engine, candidates)
        self.admin_token = db.ensure_admin(self.engine)
        self.app = create_app(self.engine, labels_per_item, **app_options)

    def client(self, name: str | None = None) -> tuple[TestClient, str]:
        """A client signed in as a new labeler `name` (or the admin when None), and its CSRF token."""
        token = self.admin_token if name is None else db.add_labeler(self.engine, name)
        client = TestClient(self.app)
        return client, login(client, token)

    def n_labels(self) -> int:
        """Rows in the labels table, skips included."""
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(db.Label))

    def item_ids(self) -> list[str]:
        with Session(self.engine) as s:
            return list(s.scalars(select(db.Item.id).order_by(db.Item.position)))
