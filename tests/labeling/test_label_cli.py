"""`rlhfkit label serve | add-labeler | export | revoke` through the real CLI dispatcher: what they do, and that
every bad input ends in exit status 1 with exactly one `rlhfkit: error:` line, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvicorn
from labeling_helpers import free_port
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from rlhfkit.cli import main
from rlhfkit.errors import DataError
from rlhfkit.labeling.web import load_candidates
from rlhfkit.labeling.webapp import db


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit status 1 and a single `rlhfkit: error:` line on stderr; return that line."""
    capsys.readouterr()  # what earlier commands printed
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("rlhfkit: error: "), err
    return err.strip()


@pytest.fixture
def no_serving(monkeypatch):
    """Make reaching the point of serving a test failure instead of a server that never returns."""

    def refuse(self, sockets=None):
        raise AssertionError("label serve started serving")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.fixture
def existing(tmp_path) -> str:
    """URL of a labelling database as `label serve` leaves it: tables, no labelers."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    db.open_db(url, create=True).dispose()
    return url


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


# ------------------------------------------------------------------------------------------------ what they do
def test_add_labeler_prints_a_token_that_logs_in(existing, capsys):
    assert main(["label", "add-labeler", "dana", "--db", existing]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 30
    assert "already exists" in one_error_line(capsys, ["label", "add-labeler", "dana", "--db", existing])
    assert main(["label", "add-labeler", "boss", "--admin", "--db", existing]) == 0
    boss = capsys.readouterr().out.strip()
    engine = db.open_db(existing)
    assert [(who.name, who.is_admin) for _, who in (db.login(engine, tok) for tok in (token, boss))] == [
        ("dana", False), ("boss", True)]


def test_export_of_an_empty_db_and_an_unknown_backend(existing, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["label", "export", "--db", existing, "--format", "rankings", "--out", str(out)]) == 0
    assert out.read_text() == ""
    assert "expected sqlite:///FILE or postgresql://" in one_error_line(
        capsys, ["label", "export", "--db", "mysql://x/y", "--out", str(out)])


def test_revoke_and_reissue_through_the_cli(existing, capsys):
    engine = db.open_db(existing)
    token = db.add_labeler(engine, "eve")
    session_id, who = db.login(engine, token)
    assert main(["label", "revoke", "eve", "--db", existing]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "revoked 'eve'" in captured.err
    assert db.lookup_session(engine, session_id) is None and db.login(engine, token) is None

    assert main(["label", "revoke", "eve", "--reissue", "--db", existing]) == 0
    captured = capsys.readouterr()
    new_token = captured.out.strip()
    assert "shown only once" in captured.err and len(new_token) >= 30
    assert db.login(engine, new_token)[1].labeler_id == who.labeler_id  # the same labeler row, signed in again
    assert db.login(engine, token) is None
    assert "no labeler named 'nobody'" in one_error_line(capsys, ["label", "revoke", "nobody", "--db", existing])


def test_serve_loads_candidates_prints_the_admin_token_and_serves(db_url, candidates, live_server):
    server = live_server(db_url, candidates)
    server.start()
    printed = server.kill()
    assert "loaded 3 new items" in printed and "admin login token (shown once): " in printed


def test_null_or_missing_policy_is_stored_and_exported_as_empty(existing, tmp_path, capsys):
    rows = [{"prompt": "p1", "responses": ["a", "b"], "policy": None},
            {"prompt": "p2", "responses": ["a", "b"]},
            {"prompt": "p3", "responses": ["a", "b"], "policy": "sft"}]
    cands = write_lines(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    engine = db.open_db(existing)
    load_candidates(engine, cands)
    _, who = db.login(engine, db.add_labeler(engine, "ann"))
    with Session(engine) as s, s.begin():
        items = list(s.scalars(select(db.Item).order_by(db.Item.position)))
        assert [i.policy for i in items] == ["", "", "sft"]
        for item in items:
            s.add(db.Label(item_id=item.id, labeler_id=who.labeler_id, ranking_json="[0, 1]",
                           likert_json="[5, 3]", flags_json="[[], []]", created_at=db.utcnow()))
    out = tmp_path / "r.jsonl"
    assert main(["label", "export", "--db", existing, "--format", "rankings", "--out", str(out)]) == 0
    policies = {r["prompt"]: r["label"]["policy"] for r in map(json.loads, out.read_text().splitlines())}
    assert policies == {"p1": "", "p2": "", "p3": "sft"}


# ------------------------------------------------------------------------------------------------ one line each
IN_MEMORY = ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
             "sqlite:///file:x?mode=memory&uri=true"]


@pytest.mark.parametrize("url", IN_MEMORY)
def test_serve_refuses_an_in_memory_database(url, no_serving, capsys):
    line = one_error_line(capsys, ["label", "serve", "--db", url, "--port", str(free_port())])
    assert "in-memory" in line and "lost" in line and "sqlite:///FILE" in line


@pytest.mark.parametrize("command", [["serve"], ["export"], ["add-labeler", "x"], ["revoke", "x"]])
@pytest.mark.parametrize("url,expected", [
    ("sqlite:/x", "is not a database URL; expected sqlite:///FILE"),
    ("labels.db", "is not a database URL; expected sqlite:///FILE"),
    ("postgresql://u:secretpw@h:port/db", "is not a database URL"),
    ("postgresql://u:secretpw@127.0.0.1:1/x", "postgresql://u:***@127.0.0.1:1/x: connection failed"),
    ("postgresql://u:secretpw@nohost.invalid/x", "failed to resolve host 'nohost.invalid'"),
])
def test_a_bad_or_unreachable_url_is_one_line_without_the_password(command, url, expected, no_serving, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything created would be created here
    extra = ["--port", str(free_port())] if command == ["serve"] else []
    line = one_error_line(capsys, ["label", *command, "--db", url, *extra])
    assert expected in line and "secretpw" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_server_that_never_answers_fails_in_seconds(monkeypatch, capsys):
    """A host that accepts the connection and says nothing (a firewall, a wrong service) is given the connect
    timeout, not the minutes the OS would wait."""
    monkeypatch.setattr(db, "PG_CONNECT_TIMEOUT_S", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"postgresql://u@127.0.0.1:{silent.getsockname()[1]}/x"
        start = time.monotonic()
        line = one_error_line(capsys, ["label", "export", "--db", url, "--out", "o.jsonl"])
    assert "timeout" in line and time.monotonic() - start < 20


@pytest.mark.parametrize("command", [["serve"], ["export"], ["add-labeler", "x"], ["revoke", "x"]])
def test_a_database_in_a_missing_directory_is_one_line(command, no_serving, capsys):
    extra = ["--port", str(free_port())] if command == ["serve"] else []
    line = one_error_line(capsys, ["label", *command, "--db", "sqlite:////nonexistent/dir/x.db", *extra])
    expected = "directory /nonexistent/dir does not exist" if command == ["serve"] else "no labelling database"
    assert "/nonexistent/dir/x.db" in line and expected in line


def test_serve_checks_the_database_path_before_the_port(tmp_path, no_serving, capsys):
    """A database under a regular file is reported as that, even when the port is taken as well."""
    afile = tmp_path / "afile"
    afile.write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        line = one_error_line(capsys, ["label", "serve", "--db", f"sqlite:///{afile / 'l.db'}",
                                       "--port", str(busy.getsockname()[1])])
    assert f"directory {afile} is not a directory" in line


@pytest.mark.parametrize("command", [["export"], ["add-labeler", "x"], ["revoke", "x"]])
def test_only_serve_creates_a_database(command, tmp_path, capsys):
    typo = tmp_path / "lables.db"
    line = one_error_line(capsys, ["label", *command, "--db", f"sqlite:///{typo}", "--out", str(tmp_path / "o")]
                          if command == ["export"] else ["label", *command, "--db", f"sqlite:///{typo}"])
    assert f"no labelling database at {typo}; `rlhfkit label serve --db sqlite:///{typo}` creates one" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["export"], ["add-labeler", "x"], ["revoke", "x"]])
def test_a_database_without_the_tables_is_not_a_labelling_database(command, db_url, tmp_path, capsys):
    """db_url is a SQLite file not yet there, or an empty PostgreSQL database: neither is created into one."""
    extra = ["--out", str(tmp_path / "o.jsonl")] if command == ["export"] else []
    line = one_error_line(capsys, ["label", *command, "--db", db_url, *extra])
    assert "no labelling database at " in line and "`rlhfkit label serve --db " in line
    assert list(tmp_path.iterdir()) == []  # no SQLite file
    if db_url.startswith("postgresql"):
        engine = create_engine(db_url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()


def test_a_file_that_is_not_a_database_is_one_line(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 100)
    line = one_error_line(capsys, ["label", "export", "--db", f"sqlite:///{junk}", "--out", str(tmp_path / "o")])
    assert str(junk) in line and "file is not a database" in line


@pytest.mark.parametrize("name,rule", [
    ("", "is empty"), ("   ", "is empty"), ("x" * 201, "has 201 characters"),
    ("a\x00b", "control character"), ("\x1b[31mred", "control character"),
])
def test_labeler_names_follow_one_rule(name, rule, existing, capsys):
    line = one_error_line(capsys, ["label", "add-labeler", name, "--db", existing])
    assert rule in line and "1 to 200 characters, not all whitespace, and no control characters" in line
    assert main(["label", "add-labeler", "x" * 200, "--db", existing]) == 0  # the limit itself is allowed


CANDIDATE_ERRORS = [  # (lines of the file, the line and field the error must name, what it says)
    ([{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "p\x00", "responses": ["a", "b"]}], 2, "prompt", "NUL"),
    ([{"prompt": "p", "responses": ["a", "b\x00"]}], 1, "responses", "NUL"),
    ([{"prompt": "p", "responses": ["a", "b"], "policy": "x\x00"}], 1, "policy", "NUL"),
    ([{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": ["", " \n"]}], 2, "responses",
     "every response is empty"),
    ([{"prompt": "p", "responses": ["a", "b"]}] * 2 + [{"prompt": "q", "responses": list("abcdefghij")}], 3,
     "responses", "record 3 has 10 responses; the labelling page shows 2 to 9"),
    ([{"prompt": "q", "responses": ["a"]}], 1, "responses", "has 1 responses"),
    ([{"prompt": "p", "responses": ["a", "b"], "policy": 3}], 1, "policy", "expected a string or null"),
]


@pytest.mark.parametrize("rows,line_no,field,what", CANDIDATE_ERRORS)
def test_serve_validates_every_candidate_before_creating_the_database(rows, line_no, field, what, tmp_path,
                                                                      no_serving, capsys):
    cands = write_lines(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    dbfile = tmp_path / "labels.db"
    line = one_error_line(capsys, ["label", "serve", "--db", f"sqlite:///{dbfile}", "--candidates", str(cands),
                                   "--port", str(free_port())])
    assert f"{cands}:{line_no}: field '{field}': " in line and what in line
    assert not dbfile.exists()


def test_a_bad_candidate_is_refused_on_both_back_ends(db_url, tmp_path, capsys):
    """PostgreSQL cannot store a NUL; SQLite can: the check comes before either sees it."""
    cands = write_lines(tmp_path / "c.jsonl", [json.dumps({"prompt": "p", "responses": ["a\x00", "b"]})])
    engine = db.open_db(db_url)
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'responses': contains a NUL"):
        load_candidates(engine, cands)
    engine.dispose()


def test_candidates_that_are_not_utf8_or_a_directory_are_one_line(tmp_path, no_serving, capsys):
    good = json.dumps({"prompt": "p", "responses": ["a", "b"]})
    latin1 = write_lines(tmp_path / "latin1.jsonl", [good, '{"prompt": "caf\xe9", "responses": ["a", "b"]}'
                                                            .encode("latin-1")])
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    for cands, where in ((latin1, f"{latin1}:2"), (folder, str(folder))):
        line = one_error_line(capsys, ["label", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}", "--candidates",
                                       str(cands), "--port", str(free_port())])
        assert where in line
    assert not (tmp_path / "l.db").exists()


def test_export_to_a_directory_or_under_a_file_is_one_line(existing, tmp_path, capsys):
    line = one_error_line(capsys, ["label", "export", "--db", existing, "--out", str(tmp_path)])
    assert f"--out {tmp_path}: is a directory" in line
    afile = tmp_path / "afile"
    afile.write_text("")
    line = one_error_line(capsys, ["label", "export", "--db", existing, "--out", str(afile / "o.jsonl")])
    assert str(afile) in line


@pytest.mark.parametrize("options,expected", [
    (["--labels-per-item", "0"], "--labels-per-item must be at least 1, got 0"),
    (["--port", "70000"], "--port 70000: a TCP port is 1 to 65535"),
    (["--port", "0"], "--port 0: a TCP port is 1 to 65535"),
    (["--host", "192.0.2.1"], "--host 192.0.2.1: not an address of this machine"),
    (["--host", "nohost.invalid"], "--host 'nohost.invalid': not an address or a known host name"),
])
def test_serve_options_that_cannot_work_are_one_line(options, expected, tmp_path, no_serving, capsys):
    port = ["--port", str(free_port())] if "--port" not in options else []
    line = one_error_line(capsys, ["label", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}", *port, *options])
    assert expected in line
    assert list(tmp_path.iterdir()) == []


def test_serve_on_a_port_in_use_is_one_line_and_creates_nothing(tmp_path, no_serving, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = one_error_line(capsys, ["label", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}",
                                       "--port", str(port)])
    assert f"--port {port}: already in use on 127.0.0.1" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command,missing", [
    (["serve"], "uvicorn"), (["serve"], "fastapi"), (["export"], "sqlalchemy"), (["add-labeler", "x"], "sqlalchemy"),
    (["revoke", "x"], "sqlalchemy"),
])
def test_without_the_web_extra_each_command_names_the_pip_command(command, missing, tmp_path, monkeypatch,
                                                                  capsys):
    # None in sys.modules makes `import <missing>` fail; the app's modules, which import it, are loaded afresh
    for name in [m for m in sys.modules if m.startswith("rlhfkit.labeling.webapp.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    line = one_error_line(capsys, ["label", *command, "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert f"({missing} is not installed): pip install 'rlhfkit[web]'" in line


# ------------------------------------------------------------------------------------------------ read-only paths
def run_without_write_permission(argv: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that file permissions bind. Root ignores them, so as root the subprocess drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capsh): it is still the owner of the test's files, and a mode
    without the owner's write bit stops it."""
    cmd = [sys.executable, "-m", "rlhfkit.cli", *argv]
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("running as root and capsh is not installed: file permissions cannot be tested")
        cmd = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(["exec", *cmd])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)  # a `serve` that serves runs on


def assert_one_error_line(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("rlhfkit: error: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.fixture
def readonly_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)  # so pytest can clean up


def test_a_database_in_a_read_only_directory_is_one_line(readonly_dir):
    dbfile = readonly_dir / "labels.db"
    done = run_without_write_permission(["label", "serve", "--db", f"sqlite:///{dbfile}", "--port",
                                         str(free_port())])
    assert_one_error_line(done, str(dbfile), "unable to open database file", "writable")


@pytest.mark.parametrize("command", [["add-labeler", "x"], ["revoke", "ann"], ["serve"]])
def test_a_read_only_database_file_is_one_line(command, existing, tmp_path):
    """serve too, with the admin in place already: it must fail at start, not at every login."""
    engine = db.open_db(existing)
    db.add_labeler(engine, "ann")
    db.ensure_admin(engine)
    engine.dispose()
    (tmp_path / "labels.db").chmod(0o444)
    extra = ["--port", str(free_port())] if command == ["serve"] else []
    done = run_without_write_permission(["label", *command, "--db", existing, *extra])
    assert_one_error_line(done, str(tmp_path / "labels.db"), "attempt to write a readonly database")


def test_a_read_only_database_file_can_be_exported(existing, tmp_path):
    (tmp_path / "labels.db").chmod(0o444)
    done = run_without_write_permission(["label", "export", "--db", existing, "--out", str(tmp_path / "o.jsonl")])
    assert done.returncode == 0, done.stderr


def test_export_into_a_read_only_directory_is_one_line(existing, readonly_dir):
    out = readonly_dir / "labels.jsonl"
    done = run_without_write_permission(["label", "export", "--db", existing, "--out", str(out)])
    assert_one_error_line(done, f"--out {out}: cannot write: Permission denied")
    assert list(readonly_dir.iterdir()) == []
