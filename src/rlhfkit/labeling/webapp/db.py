"""Database schema and the few writes the labelling app makes (SQLAlchemy; SQLite in WAL mode or PostgreSQL).

Only sha256 hashes of login tokens and session ids are stored, so a copy of the database grants no access.
Every write is one short transaction; a label's (item, labeler) pair is unique, which is what makes a double
submit store once, even when the two requests race.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from rlhfkit.data.chat import Prompt, plain_prompt
from rlhfkit.errors import RlhfkitError

MIN_K, MAX_K = 2, 9  # responses per item the page can show and the keyboard can address (digits 1-9)
FLAGS = ("harmful", "untrue")
SESSION_DAYS = 14
MAX_NAME = 200  # characters in a labeler's name (the column's width)
PG_CONNECT_TIMEOUT_S = 5  # an unreachable server fails the command in seconds, not after the OS's minutes


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    """The messages of an item whose prompt is a conversation; a row here is what makes it one.

    A table of its own, not a column of items: a database made before conversations gains it when opened (as
    create_all adds any missing table), where a new column would need an ALTER TABLE, and an item's prompt cannot
    be mistaken for the other kind (a string prompt may be any text, JSON included)."""

    __tablename__ = "conversations"
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    messages_json: Mapped[str] = mapped_column(Text)  # the messages as loaded, their keys in the file's order


class Item(Base):
    __tablename__ = "items"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # item_id(prompt, responses)
    position: Mapped[int] = mapped_column(Integer, index=True)  # load order: items are served in it
    # The prompt's text: a string prompt itself, a conversation in the plain template (readable in the database,
    # and what versions before conversations show and export). `prompt` is the prompt itself.
    prompt_text: Mapped[str] = mapped_column("prompt", Text)
    responses_json: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(Text, default="")
    # selectin: loaded with the item by every query that loads items, so an item read in one session can be
    # shown or exported after it closed
    conversation: Mapped[Conversation | None] = relationship(lazy="selectin")

    @property
    def prompt(self) -> Prompt:
        """The prompt as it was loaded: the string, or the conversation's messages."""
        return self.prompt_text if self.conversation is None else json.loads(self.conversation.messages_json)

    @property
    def responses(self) -> list[str]:
        return json.loads(self.responses_json)


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
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


def item_id(prompt: Prompt, responses: list[str]) -> str:
    """Content identity of an item: loading the same candidates twice finds the same ids. Keys are sorted, so a
    conversation is the same item whatever order its messages' keys come in; a string prompt has no keys, and
    its id is the one versions before conversations gave it."""
    return sha256(json.dumps([prompt, responses], ensure_ascii=False, sort_keys=True))[:24]


# ------------------------------------------------------------------------------------------------- engine
def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (SQLAlchemy would pick psycopg2, which is not installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# The tables every labelling database has had since the first release: their presence is what tells a labelling
# database from any other. Tables added later (offers, conversations) are created when such a database is opened.
CORE_TABLES = ("items", "labelers", "sessions", "labels")
URL_FORMS = "expected sqlite:///FILE or postgresql://USER@HOST:PORT/DB"


def _redact(raw: str) -> str:
    """A URL as the user typed it, with what looks like its password hidden (`scheme://user:***@host`); for
    URLs that did not parse, and for quoting a URL back in a hint. Greedy up to the last `@`: a password with
    a stray `@` is hidden whole."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", raw)


def _in_memory(url: URL) -> bool:
    """SQLite URLs of a database that lives in memory: `sqlite://`, `sqlite:///:memory:`, `file::memory:` and
    `?mode=memory` URIs."""
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory"


def parse_url(raw: str) -> URL:
    """The --db URL, checked: SQLite on a file or PostgreSQL (through psycopg 3).

    An in-memory SQLite database is refused: every pooled connection gets its own empty one (the app's tables
    exist in one connection only, so logins fail with `no such table`), and every label vanishes at exit.
    """
    try:
        url = make_url(normalize_url(raw))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise RlhfkitError(f"--db {_redact(raw)!r} is not a database URL; {URL_FORMS}") from None
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise RlhfkitError(f"--db {url.render_as_string(hide_password=True)!r}: {URL_FORMS}")
    if backend == "sqlite" and _in_memory(url):
        raise RlhfkitError(f"--db {raw!r} is an in-memory database: each connection would see its own empty "
                           "database and every label would be lost when the server stops; use sqlite:///FILE")
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file a SQLite URL names (a `file:` URI's path too); None for other back ends."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database.startswith("file:"):
        database = re.sub(r"^file:(//[^/]*)?", "", database)
    return Path(database)


def describe(url: URL) -> str:
    """How messages name a database: a SQLite file's path, else the URL with its password hidden."""
    path = sqlite_path(url)
    if path is not None:
        return str(path)
    # as the user wrote it: postgresql://, not the postgresql+psycopg:// that normalize_url made of it
    return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)


def _about_the_database(err: DBAPIError) -> bool:
    """Driver errors the user fixes outside rlhfkit (a server down or unknown, a file unwritable, a privilege
    missing), as opposed to a mistake in our SQL, which keeps its traceback."""
    if isinstance(err, OperationalError):  # cannot connect / open / write, database locked, disk full
        return True
    if type(err) is DatabaseError:  # SQLite: "file is not a database"
        return True
    return getattr(err.orig, "sqlstate", None) == "42501"  # PostgreSQL: insufficient privilege


@contextmanager
def database_errors(url: URL) -> Iterator[None]:
    """Turn a driver error about the database itself into one RlhfkitError line naming it (password hidden)."""
    try:
        yield
    except DBAPIError as err:
        if not _about_the_database(err):
            raise
        message = " ".join(str(err.orig).split())  # psycopg's messages span lines
        hint = " (check that the file and its directory are writable)" if (
            sqlite_path(url) is not None and ("readonly" in message or "unable to open" in message)) else ""
        raise RlhfkitError(f"labelling database {describe(url)}: {message}{hint}") from None


def _not_a_labelling_database(url: URL, raw: str) -> RlhfkitError:
    return RlhfkitError(f"no labelling database at {describe(url)}; `rlhfkit label serve --db {_redact(raw)}` "
                        "creates one")


def _engine(url: URL) -> Engine:
    """SQLite: WAL, fsync on commit, and writers that queue instead of failing. PostgreSQL: a pool sized for
    the app's threads and a short connect timeout (the URL's own connect_timeout wins)."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args=connect_args)


def check_location(url: str, create: bool) -> URL:
    """The parsed --db URL, and for SQLite the file's place checked, without touching anything: a database
    file where one can be (create) or is (not create). `label serve` runs it before binding its port."""
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is None or path.is_file():
        return parsed
    if path.exists():
        raise RlhfkitError(f"labelling database {path}: is a directory, not a database file")
    if not create:
        raise _not_a_labelling_database(parsed, url)
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise RlhfkitError(f"labelling database {path}: directory {path.parent} {problem}")
    return parsed


def open_db(url: str, create: bool = True) -> Engine:
    """Engine over the labelling database at `url`, its tables in place.

    create=False opens only an existing labelling database (`label export`, `add-labeler`, `revoke`): a typo in
    the URL must not leave a new empty database behind and report 0 labels. Only `label serve` creates one.
    """
    parsed = check_location(url, create)
    engine = _engine(parsed)
    try:
        with database_errors(parsed):
            if not create and not set(CORE_TABLES) <= set(inspect(engine).get_table_names()):
                raise _not_a_labelling_database(parsed, url)
            Base.metadata.create_all(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def existing_db(url: str) -> Iterator[Engine]:
    """An existing labelling database for one command: errors about it as one line, connections closed after."""
    engine = open_db(url, create=False)
    try:
        with database_errors(engine.url):
            yield engine
    finally:
        engine.dispose()


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
    """Insert candidates records not already present (by content id); returns how many were new. A prompt may be
    a string or a conversation (`rlhfkit.data.chat`)."""
    with Session(engine) as s, s.begin():
        start = (s.scalar(select(func.max(Item.position))) or 0) + 1
        known = set(s.scalars(select(Item.id)))
        added = 0
        for rec in records:
            iid = item_id(rec["prompt"], rec["responses"])
            if iid in known:
                continue
            known.add(iid)
            prompt = rec["prompt"]
            conversation = None if isinstance(prompt, str) else Conversation(
                messages_json=json.dumps(prompt, ensure_ascii=False))
            s.add(Item(id=iid, position=start + added, prompt_text=plain_prompt(prompt),
                       responses_json=json.dumps(rec["responses"], ensure_ascii=False),
                       policy=rec.get("policy") or "",  # missing or null: "", as the export writes it
                       conversation=conversation))
            added += 1
    return added


def check_labeler_name(name: str) -> None:
    """A labeler's name, checked the same way for both back ends (PostgreSQL alone would refuse a NUL or an
    over-long name, with a traceback): 1 to MAX_NAME characters, not only whitespace, no control characters
    (the name is shown on the admin page and written into every exported record)."""
    rule = f"a labeler's name has 1 to {MAX_NAME} characters, not all whitespace, and no control characters"
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    if not name.strip():
        raise RlhfkitError(f"labeler name {shown} is empty; {rule}")
    if len(name) > MAX_NAME:
        raise RlhfkitError(f"labeler name {shown} has {len(name)} characters; {rule}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise RlhfkitError(f"labeler name {shown} contains a control character; {rule}")


def add_labeler(engine: Engine, name: str, is_admin: bool = False) -> str:
    """Create a labeler; returns the login token, shown once (only its hash is kept)."""
    check_labeler_name(name)
    token = secrets.token_urlsafe(24)
    try:
        with Session(engine) as s, s.begin():
            s.add(Labeler(name=name, token_hash=sha256(token), is_admin=is_admin, created_at=utcnow()))
    except IntegrityError:
        raise RlhfkitError(f"a labeler named {name!r} already exists; choose another name") from None
    return token


def revoke_labeler(engine: Engine, name: str, reissue: bool = False) -> str | None:
    """Revoke a labeler's access at once: their token stops working, their sessions end and their offers no
    longer hold places. Their row and labels stay (the export's provenance names them).

    The stored hash is replaced by the hash of a fresh random token: with reissue that token is returned (to be
    shown once), otherwise it is discarded, so no token logs them in again. Raises RlhfkitError for an unknown
    name.
    """
    token = secrets.token_urlsafe(24)
    with Session(engine) as s, s.begin():
        labeler = s.scalar(select(Labeler).where(Labeler.name == name))
        if labeler is None:
            raise RlhfkitError(f"no labeler named {name!r}; `rlhfkit label add-labeler` creates one")
        labeler.token_hash = sha256(token)
        s.execute(delete(LoginSession).where(LoginSession.labeler_id == labeler.id))
        s.execute(delete(Offer).where(Offer.labeler_id == labeler.id))
    return token if reissue else None


def purge_expired_sessions(engine: Engine) -> int:
    """Delete sessions past their expiry (logout removes only live ones); returns how many. `label serve` runs it
    at start, where it doubles as the proof that the database takes writes: a read-only one (SQLite refuses
    even a write that matches no row) fails there in one line instead of at every login."""
    with Session(engine) as s, s.begin():
        return s.execute(delete(LoginSession).where(LoginSession.expires_at <= utcnow())).rowcount


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
