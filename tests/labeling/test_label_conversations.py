"""Candidates whose prompt is a conversation, through the whole labelling path: `label serve` loads them, the
labelling and admin pages show the turns, `label export` writes the prompt back as it came in (both formats, read
back by rlhfkit.data), a database made before conversations still opens and works, and `label auto` labels them
with VADER and with a `module:function` judge, which gets the conversation's plain-template text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labeling_helpers import ITEM_RE, Env, full_label
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from rlhfkit import cli
from rlhfkit.data import read_records
from rlhfkit.errors import DataError
from rlhfkit.labeling.web import export_main, read_candidates
from rlhfkit.labeling.webapp import db

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a <b>film</b>"},
    {"role": "assistant", "content": "Alien"},
    {"role": "user", "content": "Another?"},
]
# What the labelling page shows of CONVERSATION: one list item per turn, every text escaped.
TURNS_HTML = """<ol class="conversation prompt" id="prompt">
  <li class="turn system"><span class="role">system</span><pre class="text">You are terse.</pre></li>
  <li class="turn user"><span class="role">user</span><pre class="text">Name a &lt;b&gt;film&lt;/b&gt;</pre></li>
  <li class="turn assistant"><span class="role">assistant</span><pre class="text">Alien</pre></li>
  <li class="turn user"><span class="role">user</span><pre class="text">Another?</pre></li>
</ol>"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def chat_candidates(tmp_path) -> Path:
    """A conversation item (its responses given as assistant messages, as TRL writes them), then a string one."""
    return write_jsonl(tmp_path / "chat.jsonl", [
        {"prompt": CONVERSATION, "responses": [{"role": "assistant", "content": "Heat"},
                                               {"role": "assistant", "content": "Ran"}], "policy": "chat"},
        {"prompt": "Plain prompt", "responses": ["yes", "no"], "policy": "p"},
    ])


def label_shown_item(client, csrf: str, ranking: list[int]) -> str:
    """Label the item the page shows with `ranking` (indices best first); returns the page's HTML."""
    page = client.get("/label").text
    item = ITEM_RE.search(page).group(1)
    r = client.post("/label", data={"csrf": csrf, "item_id": item, "action": "submit",
                                    **full_label(2, ranking)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return page


def export(url: str, fmt: str, out: Path) -> list[dict]:
    assert export_main(["--db", url, "--format", fmt, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ serve and export
def test_a_conversation_is_labelled_and_exported_as_it_came_in(db_url, chat_candidates, tmp_path):
    env = Env(db_url, chat_candidates, labels_per_item=1)
    client, csrf = env.client(None)
    page = label_shown_item(client, csrf, [1, 0])  # "Ran" over "Heat"
    assert TURNS_HTML in page
    assert "&#39;role&#39;" not in page and "&#34;role&#34;" not in page  # no dump of the messages
    page = label_shown_item(client, csrf, [0, 1])  # "yes" over "no"
    assert '<pre class="text prompt" id="prompt">Plain prompt</pre>' in page  # a string prompt as before
    env.engine.dispose()

    preferences = export(env.url, "preferences", tmp_path / "preferences.jsonl")  # in item id order
    assert {r["label"]["policy"]: (r["prompt"], r["chosen"], r["rejected"]) for r in preferences} == {
        "chat": (CONVERSATION, "Ran", "Heat"), "p": ("Plain prompt", "yes", "no")}
    back = read_records(tmp_path / "preferences.jsonl", "preferences")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in back] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in preferences]

    rankings = export(env.url, "rankings", tmp_path / "rankings.jsonl")
    by_policy = {r["label"]["policy"]: r for r in rankings}
    assert (by_policy["chat"]["prompt"], by_policy["chat"]["responses"], by_policy["chat"]["ranking"]) == (
        CONVERSATION, ["Heat", "Ran"], [1, 0])
    assert by_policy["p"]["prompt"] == "Plain prompt"


def test_exported_rankings_of_a_conversation_read_back(db_url, chat_candidates, tmp_path):
    env = Env(db_url, chat_candidates, labels_per_item=1)
    client, csrf = env.client(None)
    label_shown_item(client, csrf, [1, 0])
    env.engine.dispose()
    export(env.url, "rankings", tmp_path / "rankings.jsonl")
    [back] = read_records(tmp_path / "rankings.jsonl", "rankings")
    assert (back["prompt"], back["responses"], back["ranking"]) == (CONVERSATION, ["Heat", "Ran"], [1, 0])


def test_the_admin_page_shows_a_disputed_conversation_as_its_turns(db_url, chat_candidates):
    env = Env(db_url, chat_candidates, labels_per_item=2)
    for name, ranking in (("ann", [0, 1]), ("bob", [1, 0])):  # they disagree on the conversation item
        client, csrf = env.client(name)
        label_shown_item(client, csrf, ranking)
    admin, _ = env.client(None)
    disputed = admin.get("/admin").text.split('<table id="disputed">')[1].split("</table>")[0]
    assert '<li class="turn user"><span class="role">user</span><pre class="text">Another?</pre></li>' in disputed
    assert "Name a &lt;b&gt;film&lt;/b&gt;" in disputed and "Plain prompt" not in disputed
    env.engine.dispose()


# ---------------------------------------------------------------------------------------------- the database
def test_a_conversation_is_its_own_item_and_string_ids_are_unchanged(db_url):
    engine = db.open_db(db_url)
    reordered = [{"content": m["content"], "role": m["role"]} for m in CONVERSATION]
    assert db.add_items(engine, [{"prompt": CONVERSATION, "responses": ["a", "b"]},
                                 {"prompt": reordered, "responses": ["a", "b"]},  # the same conversation
                                 {"prompt": "p", "responses": ["a", "b"]}]) == 2
    # the id the versions before conversations gave this item: a database they filled finds its items again
    assert db.item_id("p", ["a", "b"]) == "f98223de264b44ccc94f8ec5"
    with Session(engine) as s:
        rows = s.execute(text("SELECT prompt FROM items ORDER BY position")).scalars().all()
        (messages,) = s.execute(text("SELECT messages_json FROM conversations")).scalars().all()
    # items.prompt holds the conversation's plain-template text (what an older rlhfkit shows); the messages,
    # as they came in, are kept apart, so no string prompt can be read as a conversation
    assert rows == ["System: You are terse.\nUser: Name a <b>film</b>\nAssistant: Alien\nUser: Another?", "p"]
    assert json.loads(messages) == CONVERSATION
    engine.dispose()


def test_the_items_table_keeps_the_columns_older_versions_made():
    """A database made before conversations has these columns: the items table must not need another."""
    assert [c.name for c in db.Item.__table__.columns] == ["id", "position", "prompt", "responses_json", "policy"]


def test_a_database_made_before_conversations_opens_and_takes_them(db_url, chat_candidates, tmp_path):
    engine = db.open_db(db_url)
    db.add_items(engine, [{"prompt": "old item", "responses": ["a", "b"]}])
    db.Conversation.__table__.drop(engine)  # the database as the previous version left it
    assert "conversations" not in inspect(engine).get_table_names()
    engine.dispose()

    with db.existing_db(db_url) as engine:  # export and add-labeler open it without creating a database
        assert "conversations" in inspect(engine).get_table_names()
    env = Env(db_url, chat_candidates, labels_per_item=1)  # as `label serve --candidates` does
    client, csrf = env.client(None)
    pages = [label_shown_item(client, csrf, [0, 1]) for _ in range(3)]  # load order: old item first
    assert '<pre class="text prompt" id="prompt">old item</pre>' in pages[0] and TURNS_HTML in pages[1]
    env.engine.dispose()
    prompts = [r["prompt"] for r in export(db_url, "rankings", tmp_path / "rankings.jsonl")]
    assert sorted(map(json.dumps, prompts)) == sorted(map(json.dumps, ["old item", CONVERSATION, "Plain prompt"]))


def test_a_nul_in_a_message_is_refused_before_the_database(tmp_path):
    """PostgreSQL cannot store a NUL, and the conversation's text is stored: both back ends refuse the file."""
    bad = [dict(m, content=m["content"] + "\x00") if i == 3 else m for i, m in enumerate(CONVERSATION)]
    path = write_jsonl(tmp_path / "nul.jsonl", [{"prompt": "ok", "responses": ["a", "b"]},
                                                {"prompt": bad, "responses": ["a", "b"]}])
    with pytest.raises(DataError) as err:
        read_candidates(path)
    assert str(err.value) == f"{path}:2: field 'prompt': contains a NUL character (\\u0000), which the database " \
                             "cannot store"


# ------------------------------------------------------------------------------------------------ label auto
SEEN: list[str] = []


def longest_first(prompts, responses):
    """A `module:function` judge: longer is better; records the prompts it is given."""
    SEEN.extend(prompts)
    return [float(len(r)) for r in responses]


@pytest.fixture
def auto_candidates(tmp_path) -> Path:
    return write_jsonl(tmp_path / "auto.jsonl", [
        {"prompt": CONVERSATION, "responses": ["It was awful, I hated it.", "Fine.", "Wonderful, I loved it!!"],
         "policy": "chat"},
    ])


def auto(candidates: Path, out: Path, judge: str, mode: str) -> list[dict]:
    assert cli.main(["label", "auto", "--candidates", str(candidates), "--out", str(out), "--judge", judge,
                     "--mode", mode]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_label_auto_gives_a_function_judge_the_plain_text_and_keeps_the_conversation(auto_candidates, tmp_path):
    SEEN.clear()
    pairs = auto(auto_candidates, tmp_path / "pairs.jsonl", f"{__name__}:longest_first", "pairs")
    assert SEEN == ["System: You are terse.\nUser: Name a <b>film</b>\nAssistant: Alien\nUser: Another?"] * 3
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in pairs] == [
        (CONVERSATION, "It was awful, I hated it.", "Fine."),
        (CONVERSATION, "It was awful, I hated it.", "Wonderful, I loved it!!"),
        (CONVERSATION, "Wonderful, I loved it!!", "Fine."),
    ]
    assert [r["prompt"] for r in read_records(tmp_path / "pairs.jsonl", "preferences")] == [CONVERSATION] * 3
    [ranking] = auto(auto_candidates, tmp_path / "rankings.jsonl", f"{__name__}:longest_first", "rankings")
    assert (ranking["prompt"], ranking["ranking"]) == (CONVERSATION, [0, 2, 1])


def test_label_auto_with_vader_on_a_conversation(auto_candidates, tmp_path):
    pairs = auto(auto_candidates, tmp_path / "pairs.jsonl", "vader", "pairs")
    loved_over_hated = [r for r in pairs if {r["chosen"], r["rejected"]} == {"It was awful, I hated it.",
                                                                            "Wonderful, I loved it!!"}]
    assert [(r["prompt"], r["chosen"]) for r in loved_over_hated] == [(CONVERSATION, "Wonderful, I loved it!!")]
    [ranking] = auto(auto_candidates, tmp_path / "rankings.jsonl", "vader", "rankings")
    assert (ranking["prompt"], ranking["ranking"]) == (CONVERSATION, [2, 1, 0])


def test_label_auto_rankings_of_a_conversation_read_back(auto_candidates, tmp_path):
    auto(auto_candidates, tmp_path / "rankings.jsonl", f"{__name__}:longest_first", "rankings")
    [back] = read_records(tmp_path / "rankings.jsonl", "rankings")
    assert (back["prompt"], back["ranking"]) == (CONVERSATION, [0, 2, 1])
