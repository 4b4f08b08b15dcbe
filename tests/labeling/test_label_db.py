"""The labelling database's own rules, the same on SQLite and PostgreSQL: labeler names, revoking a labeler,
what is stored for a missing policy, and which opens may create or upgrade a database."""

from __future__ import annotations

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from rlhfkit.errors import RlhfkitError
from rlhfkit.labeling.webapp import db


@pytest.fixture
def engine(db_url):
    engine = db.open_db(db_url, create=True)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", ["", " \t", "x" * 201, "nul\x00", "tab\there", "del\x7f"])
def test_a_name_one_back_end_would_refuse_is_refused_on_both(engine, name):
    """PostgreSQL refused a NUL and a name over 200 characters with a driver traceback; SQLite stored both."""
    with pytest.raises(RlhfkitError, match="a labeler's name has 1 to 200 characters"):
        db.add_labeler(engine, name)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(db.Labeler)) == 0


def test_names_within_the_rule_are_kept_as_given(engine):
    for name in ("x" * 200, "Zoë O'Brien", "名前"):
        db.login(engine, db.add_labeler(engine, name))
    with Session(engine) as s:
        assert sorted(s.scalars(select(db.Labeler.name))) == sorted(["x" * 200, "Zoë O'Brien", "名前"])


def offer_and_label(engine, labeler_id: int) -> None:
    db.add_items(engine, [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": ["c", "d"]}])
    with Session(engine) as s, s.begin():
        first, second = s.scalars(select(db.Item.id).order_by(db.Item.position))
        s.add(db.Label(item_id=first, labeler_id=labeler_id, ranking_json="[0, 1]", created_at=db.utcnow()))
        s.add(db.Offer(item_id=second, labeler_id=labeler_id, offered_at=db.utcnow()))


def counts(engine, labeler_id: int) -> tuple[int, int, int, int]:
    """(labeler rows, sessions, offers, labels) of one labeler."""
    columns = (db.Labeler.id, db.LoginSession.labeler_id, db.Offer.labeler_id, db.Label.labeler_id)
    with Session(engine) as s:
        return tuple(s.scalar(select(func.count()).where(column == labeler_id)) for column in columns)


def test_revoking_ends_every_session_and_the_token_and_keeps_the_labels(engine):
    token = db.add_labeler(engine, "eve")
    other = db.add_labeler(engine, "sam")
    sessions = [db.login(engine, token)[0] for _ in range(2)]  # two browsers
    who = db.lookup_session(engine, sessions[0])
    offer_and_label(engine, who.labeler_id)
    other_session = db.login(engine, other)[0]
    assert counts(engine, who.labeler_id) == (1, 2, 1, 1)

    assert db.revoke_labeler(engine, "eve") is None
    assert [db.lookup_session(engine, sid) for sid in sessions] == [None, None]
    assert db.login(engine, token) is None
    assert counts(engine, who.labeler_id) == (1, 0, 0, 1)  # the row and the label stay, the offer's place is free
    assert db.lookup_session(engine, other_session).name == "sam"  # nobody else is signed out


def test_reissuing_gives_a_new_token_for_the_same_labeler(engine):
    token = db.add_labeler(engine, "eve")
    session_id, who = db.login(engine, token)
    new_token = db.revoke_labeler(engine, "eve", reissue=True)
    assert new_token and new_token != token
    assert db.lookup_session(engine, session_id) is None and db.login(engine, token) is None
    assert db.login(engine, new_token)[1].labeler_id == who.labeler_id


def test_revoking_an_unknown_name_says_so(engine):
    with pytest.raises(RlhfkitError, match="no labeler named 'ghost'"):
        db.revoke_labeler(engine, "ghost")


def test_expired_sessions_are_purged_and_live_ones_kept(engine):
    token = db.add_labeler(engine, "eve")
    expired, live = db.login(engine, token)[0], db.login(engine, token)[0]
    with Session(engine) as s, s.begin():
        s.get(db.LoginSession, db.sha256(expired)).expires_at = db.utcnow()
    assert db.purge_expired_sessions(engine) == 1
    with Session(engine) as s:
        assert list(s.scalars(select(db.LoginSession.id_hash))) == [db.sha256(live)]


def test_a_null_or_missing_policy_is_stored_as_empty(engine):
    db.add_items(engine, [{"prompt": "p", "responses": ["a", "b"], "policy": None},
                          {"prompt": "q", "responses": ["a", "b"]},
                          {"prompt": "r", "responses": ["a", "b"], "policy": "sft"}])
    with Session(engine) as s:
        assert list(s.scalars(select(db.Item.policy).order_by(db.Item.position))) == ["", "", "sft"]


def test_opening_an_older_database_adds_the_tables_it_lacks(db_url):
    """A database made before the offers table existed still opens, for serve and for the other commands."""
    engine = db.open_db(db_url, create=True)
    db.Offer.__table__.drop(engine)
    engine.dispose()
    for create in (False, True):
        engine = db.open_db(db_url, create=create)
        assert "offers" in inspect(engine).get_table_names()
        db.Offer.__table__.drop(engine)
        engine.dispose()


def test_a_database_of_something_else_is_not_opened_without_create(db_url):
    engine = db.open_db(db_url, create=True)
    db.Label.__table__.drop(engine)  # labelers exists, labels does not: not a labelling database
    engine.dispose()
    with pytest.raises(RlhfkitError, match="no labelling database at "):
        db.open_db(db_url, create=False)


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///labels.db", "labels.db"),
    ("postgresql://ann:hunter2@db.example:5433/labels", "postgresql://ann:***@db.example:5433/labels"),
    ("postgresql+psycopg://ann@db.example/labels", "postgresql://ann@db.example/labels"),
])
def test_messages_name_a_database_without_its_password(url, expected):
    assert db.describe(db.parse_url(url)) == expected
