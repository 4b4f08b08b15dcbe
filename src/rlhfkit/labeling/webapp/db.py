"""Database schema and the few writes the labelling app makes (SQLAlchemy; SQLite in WAL mode or PostgreSQL).

Only sha256 hashes of login tokens and session ids are stored, so a copy of the database grants no access.
Every write is one short transaction; a label's (item, labeler) pair is unique, which is what makes a double
submit store once, even when the two requests race.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from rlhfkit.errors import RlhfkitError

MIN_K, MAX_K = 2, 9  # responses per item the page can show and the keyboard can address (digits 1-9)
FLAGS = ("harmful", "untrue")
SESSION_DAYS = 14


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # item_id(prompt, responses)
    position: Mapped[int] = mapped_column(Integer, index=True)  # load order: items are served in it
    prompt: Mapped[str] = mapped_column(Text)
    responses_json: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(Text, default="")

    @property
    def responses(self) -> list[str]:
        return json.loads(self.responses_json)


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class LoginSession(Base):
    __tablename__ = "sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Offer(Base):
    """An item shown to a labeler (GET /label): only an offered item may be labelled by them, and a live offer
    holds one of the item's `labels_per_item` places so an item never collects more labels than that."""

    __tablename__ = "offers"
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), primary_key=True, index=True)
    offered_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id", name="one_label_per_labeler"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    ranking_json: Mapped[str] = mapped_column(Text, default="[]")  # response indices, best first
    likert_json: Mapped[str] = mapped_column(Text, default="[]")  # per response, 1-7
    flags_json: Mapped[str] = mapped_column(Text, default="[]")  # per response, list of FLAGS
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


def utcnow() -> dt.datetime:
    """Naive UTC, stored the same way by SQLite and PostgreSQL (microsecond precision in both)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_id(prompt: str, responses: list[str]) -> str:
    """Content identity of an item: loading the same candidates twice finds the same ids."""
    return sha256(json.dumps([prompt, responses], ensure_ascii=False))[:24]


# ------------------------------------------------------------------------------------------------- engine
def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (SQLAlchemy would pick psycopg2, which is not installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def open_db(url: str) -> Engine:
    """Engine with tables created. SQLite: WAL, fsync on commit, and writers that queue instead of failing."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    elif url.startswith("postgresql"):
        engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    else:
        raise RlhfkitError(f"--db {url!r}: expected sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
    Base.metadata.create_all(engine)
    return engine


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # let _sqlite_begin issue BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a label survives a power cut once its submit returned
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another writer got
    # in between; BEGIN IMMEDIATE takes the write lock up front, so concurrent submits wait (busy timeout).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# ------------------------------------------------------------------------------------------------- writes
def add_items(engine: Engine, records: list[dict]) -> int:
    """Insert candidates records not already present (by content id); returns how many were new."""
    with Session(engine) as s, s.begin():
        start = (s.scalar(select(func.max(Item.position))) or 0) + 1
        known = set(s.scalars(select(Item.id)))
        added = 0
        for rec in records:
            iid = item_id(rec["prompt"], rec["responses"])
            if iid in known:
                continue
            known.add(iid)
            s.add(Item(id=iid, position=start + added, prompt=rec["prompt"],
                       responses_json=json.dumps(rec["responses"], ensure_ascii=False),
                       policy=str(rec.get("policy", ""))))
            added += 1
    return added


def add_labeler(engine: Engine, name: str, is_admin: bool = False) -> str:
    """Create a labeler; returns the login token, shown once (only its hash is kept)."""
    token = secrets.token_urlsafe(24)
    try:
        with Session(engine) as s, s.begin():
            s.add(Labeler(name=name, token_hash=sha256(token), is_admin=is_admin, created_at=utcnow()))
    except IntegrityError:
        raise RlhfkitError(f"a labeler named {name!r} already exists; choose another name") from None
    return token


def ensure_admin(engine: Engine) -> str | None:
    """On first start create the 'admin' account; returns its token then, None when an admin exists."""
    with Session(engine) as s:
        if s.scalar(select(Labeler.id).where(Labeler.is_admin)) is not None:
            return None
    return add_labeler(engine, "admin", is_admin=True)


@dataclass(frozen=True)
class Who:
    """The signed-in labeler, as the request handlers see them."""

    labeler_id: int
    name: str
    is_admin: bool
    csrf: str


def login(engine: Engine, token: str) -> tuple[str, Who] | None:
    """Exchange a login token for a new session id (returned once; stored hashed)."""
    with Session(engine) as s, s.begin():
        labeler = s.scalar(select(Labeler).where(Labeler.token_hash == sha256(token)))
        if labeler is None:
            return None
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        s.add(LoginSession(id_hash=sha256(session_id), labeler_id=labeler.id, csrf=csrf,
                           expires_at=utcnow() + dt.timedelta(days=SESSION_DAYS)))
        return session_id, Who(labeler.id, labeler.name, labeler.is_admin, csrf)


def lookup_session(engine: Engine, session_id: str) -> Who | None:
    with Session(engine) as s:
        row = s.execute(
            select(LoginSession, Labeler)
            .join(Labeler, Labeler.id == LoginSession.labeler_id)
            .where(LoginSession.id_hash == sha256(session_id), LoginSession.expires_at > utcnow())
        ).first()
    if row is None:
        return None
    sess, labeler = row
    return Who(labeler.id, labeler.name, labeler.is_admin, sess.csrf)


def logout(engine: Engine, session_id: str) -> None:
    with Session(engine) as s, s.begin():
        sess = s.get(LoginSession, sha256(session_id))
        if sess is not None:
            s.delete(sess)
