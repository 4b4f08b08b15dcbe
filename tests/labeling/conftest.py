"""Fixtures for the labelling app: a database per test (SQLite always, PostgreSQL when a server can be had),
a candidates file, a signed-in test client, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from labeling_helpers import SCRIPT, free_port

PGBIN = Path("/usr/lib/postgresql/15/bin")


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _start_throwaway_pg():
    """A PostgreSQL server as CI_NOTES.md describes: data folder owned by postgres, 127.0.0.1, fsync off.
    Returns (url, stop) or raises pytest.skip with the reason."""
    pgbin = PGBIN if PGBIN.exists() else next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if pgbin is None or not (pgbin / "initdb").exists():
        pytest.skip("no PostgreSQL server: initdb not found under /usr/lib/postgresql/*/bin and "
                    "RLHFKIT_TEST_PG_URL is not set")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server: starting one needs root (runuser -u postgres); set RLHFKIT_TEST_PG_URL")
    root = tempfile.mkdtemp(prefix="rlhfkit-pg-")
    port = free_port()

    def as_pg(*cmd):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                              timeout=60)

    shutil.chown(root, "postgres")
    os.chmod(root, 0o700)
    steps = [
        [str(pgbin / "initdb"), "-D", f"{root}/data", "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        [str(pgbin / "pg_ctl"), "-D", f"{root}/data", "-l", f"{root}/log", "-w", "-t", "30", "-o",
         f"-k {root} -p {port} -h 127.0.0.1 -c fsync=off", "start"],
        [str(pgbin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "rlhfkit_test"],
    ]

    def stop():
        as_pg(str(pgbin / "pg_ctl"), "-D", f"{root}/data", "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)

    for cmd in steps:
        done = as_pg(*cmd)
        if done.returncode != 0:
            stop()
            pytest.skip(f"could not start PostgreSQL ({Path(cmd[0]).name}): {done.stderr.strip()[-300:]}")
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/rlhfkit_test", stop


@pytest.fixture(scope="session")
def pg_server():
    """Base URL of a PostgreSQL server for the whole session: RLHFKIT_TEST_PG_URL, else a throwaway one."""
    if os.environ.get("RLHFKIT_TEST_PG_URL"):
        yield os.environ["RLHFKIT_TEST_PG_URL"]
        return
    url, stop = _start_throwaway_pg()
    try:
        yield url
    finally:
        stop()


def _fresh_pg_database(base_url: str):
    """A new empty database on the server for one test, dropped afterwards. Where the account may not create
    databases (a given RLHFKIT_TEST_PG_URL), the given database is used with the app's tables dropped first."""
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from rlhfkit.labeling.webapp.db import Base, normalize_url

    url = make_url(normalize_url(base_url))
    name = f"rlhfkit_{uuid.uuid4().hex[:12]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege:
        engine = create_engine(url)
        Base.metadata.drop_all(engine)
        engine.dispose()
        yield url.render_as_string(hide_password=False)
        return
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database URL: SQLite in tmp_path, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    yield from _fresh_pg_database(request.getfixturevalue("pg_server"))


# ------------------------------------------------------------------------------------------------ data



@pytest.fixture
def candidates(tmp_path) -> Path:
    """Three items: the first with hostile model text (script, HTML, markdown), K = 3, 2 and 4."""
    rows = [
        {"prompt": "Describe <b>this</b> film", "policy": "p",
         "responses": [SCRIPT, "<img src=x onerror=alert(1)>", "**bold** [x](javascript:alert(1))"]},
        {"prompt": "Second prompt", "responses": ["yes", "no"], "policy": "p"},
        {"prompt": "Third prompt", "responses": ["a", "b", "c", "d"], "policy": "q"},
    ]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ servers
class LiveServer:
    """`rlhfkit label serve` in a subprocess on a free 127.0.0.1 port; start() waits until it answers."""

    def __init__(self, db: str, candidates: Path | None, labels_per_item: int):
        self.db, self.candidates, self.labels_per_item = db, candidates, labels_per_item
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        import httpx

        self.port = free_port()
        cmd = [sys.executable, "-m", "rlhfkit.cli", "label", "serve", "--db", self.db, "--port", str(self.port),
               "--labels-per-item", str(self.labels_per_item)]
        if self.candidates is not None:
            cmd += ["--candidates", str(self.candidates)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(300):  # <= 30 s
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                httpx.get(f"{self.url}/login", timeout=1.0)
                return self.url
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start within 30 s")

    def kill(self) -> str:
        """SIGKILL: no shutdown hooks run, as in a crash. Returns what the server printed."""
        if self.proc is None:
            return ""
        self.proc.kill()
        out = self.proc.communicate(timeout=10)[0]
        self.proc = None
        return out


@pytest.fixture
def live_server():
    servers: list[LiveServer] = []

    def make(db: str, candidates: Path | None = None, labels_per_item: int = 3) -> LiveServer:
        servers.append(LiveServer(db, candidates, labels_per_item))
        return servers[-1]

    yield make
    for s in servers:
        s.kill()
