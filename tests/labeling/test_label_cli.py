"""`rlhfkit label add-labeler` and `rlhfkit label export` through the real CLI dispatcher."""

from __future__ import annotations

from labeling_helpers import login
from fastapi.testclient import TestClient

from rlhfkit.cli import main
from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.app import create_app


def test_add_labeler_prints_a_token_that_logs_in(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert main(["label", "add-labeler", "dana", "--db", url]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 30
    assert main(["label", "add-labeler", "dana", "--db", url]) == 1  # the name is taken
    assert "already exists" in capsys.readouterr().err
    assert main(["label", "add-labeler", "boss", "--admin", "--db", url]) == 0
    boss = capsys.readouterr().out.strip()
    app = create_app(db.open_db(url))
    for tok, home in ((token, "/label"), (boss, "/admin")):
        client = TestClient(app)
        login(client, tok)
        assert client.get("/", follow_redirects=False).headers["location"] == home


def test_export_of_an_empty_db_and_bad_options(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    out = tmp_path / "out.jsonl"
    assert main(["label", "export", "--db", url, "--format", "rankings", "--out", str(out)]) == 0
    assert out.read_text() == ""
    assert main(["label", "export", "--db", "mysql://x/y", "--out", str(out)]) == 1
    assert "expected sqlite:///FILE or postgresql://" in capsys.readouterr().err
