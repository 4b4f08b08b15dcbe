"""`rlhfkit label serve | add-labeler | export | revoke`: the web app where people rank and score responses.

Follows InstructGPT's labelling interface (Ouyang et al. 2022, appendix B): a prompt, K responses, a 1-7 score
for each, a ranking of all K (only the ranking trains the reward model), and flags for harmful or untrue
responses. The app lives in rlhfkit.labeling.webapp; this module is its command line.

Only `serve` creates a database; the other commands open an existing one, so a mistyped --db fails instead of
answering from a new empty database. Every check that can fail runs before anything is written: the candidates
file is read and validated whole, and the listening socket is bound, before the database is opened or created.
"""

from __future__ import annotations

import errno
import functools
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import tyro

from rlhfkit.config import parse
from rlhfkit.errors import DataError, RlhfkitError

DEFAULT_DB = "sqlite:///labels.db"


@dataclass(frozen=True)
class ServeArgs:
    """Serve the labelling app."""

    candidates: Path | None = None
    """candidates JSONL ({"prompt", "responses": [2..9 str], "policy"}; the prompt may be a conversation) to load;
    loading it again adds nothing."""
    db: str = DEFAULT_DB
    """database URL: sqlite:///FILE (WAL mode) or postgresql://USER@HOST:PORT/DB."""
    host: str = "127.0.0.1"
    """address to listen on; keep the loopback default unless a TLS proxy sits in front."""
    port: int = 8000
    """TCP port to listen on (1-65535)."""
    labels_per_item: int = 3
    """each item gets exactly this many labels from different labelers (skips do not count)."""
    secure_cookies: bool = False
    """mark the session cookie Secure (set this when served over HTTPS)."""


@dataclass(frozen=True)
class AddLabelerArgs:
    """Create a labeler and print their one-time-shown login token."""

    name: tyro.conf.Positional[str]
    """the labeler's name, unique; it appears in the exported provenance."""
    db: str = DEFAULT_DB
    """database URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DB."""
    admin: bool = False
    """give this labeler the admin pages (progress, agreement, export)."""


@dataclass(frozen=True)
class ExportArgs:
    """Export collected labels as JSONL that `rlhfkit rm train` and `rlhfkit dpo` read."""

    db: str = DEFAULT_DB
    """database URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DB."""
    format: Literal["preferences", "rankings"] = "preferences"
    """preferences (a ranking of K becomes its C(K,2) pairs) or rankings (one record per label)."""
    out: Path = Path("labels.jsonl")
    """where to write; written atomically and byte-identical for the same database."""


@dataclass(frozen=True)
class RevokeArgs:
    """Revoke a labeler: their login token stops working and they are signed out everywhere at once."""

    name: tyro.conf.Positional[str]
    """the labeler's name; their row and labels are kept (the export's provenance names them)."""
    db: str = DEFAULT_DB
    """database URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DB."""
    reissue: bool = False
    """print a new login token for them (shown once) instead of locking them out, e.g. after a token leaked."""


# Import names of pyproject's `web` extra (and starlette, which fastapi brings): a missing one means the extra
# is not installed, whereas any other missing module is a bug and keeps its traceback.
WEB_EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "jinja2", "multipart", "python_multipart",
                     "psycopg")


def needs_web_extra(command: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Decorate a command's main: a web-extra package that fails to import becomes one line with the pip
    command. The packages are imported inside the mains (the rest of rlhfkit runs without them)."""

    def decorate(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        @functools.wraps(main)
        def wrapped(argv: list[str]) -> int:
            try:
                return main(argv)
            except ModuleNotFoundError as err:
                if (err.name or "").split(".")[0] not in WEB_EXTRA_MODULES:
                    raise
                raise RlhfkitError(f"`rlhfkit label {command}` needs the web extra ({err.name} is not "
                                   "installed): pip install 'rlhfkit[web]'") from None

        return wrapped

    return decorate


def check_item(rec: dict, where: tuple[str, int], number: int) -> None:
    """What the labelling page and both databases need of candidates record `number` beyond its format: 2 to
    9 responses (the page's keys 1-9), at least one non-blank response (else there is nothing to judge), a
    string policy if any, and no NUL character in any text, a conversation prompt's messages included
    (PostgreSQL cannot store one and SQLite can: checked here, the two back ends accept the same files)."""
    from rlhfkit.labeling.webapp.db import MAX_K, MIN_K

    responses = rec["responses"]
    if not MIN_K <= len(responses) <= MAX_K:
        raise DataError(*where, f"record {number} has {len(responses)} responses; the labelling page shows "
                        f"{MIN_K} to {MAX_K}", "responses")
    if not any(r.strip() for r in responses):
        raise DataError(*where, "every response is empty or blank: there is nothing to judge", "responses")
    policy = rec.get("policy")
    if policy is not None and not isinstance(policy, str):
        raise DataError(*where, f"expected a string or null, got {type(policy).__name__}", "policy")
    prompt = rec["prompt"]
    prompt_texts = [prompt] if isinstance(prompt, str) else [message["content"] for message in prompt]
    for field, texts in (("prompt", prompt_texts), ("responses", responses), ("policy", [policy or ""])):
        if any("\x00" in text for text in texts):
            raise DataError(*where, "contains a NUL character (\\u0000), which the database cannot store", field)


def read_candidates(path: Path) -> list[dict]:
    """Every record of a candidates file, validated (rlhfkit.data's format, then check_item) before any is
    stored: a bad record anywhere leaves the database, or its absence, as it was."""
    from rlhfkit.data import read_located

    located = read_located(path, "candidates")
    for number, (rec, where) in enumerate(located, start=1):
        check_item(rec, where, number)
    return [rec for rec, _where in located]


def load_candidates(engine, path: Path) -> int:
    """Read a candidates file into the database; returns the number of new items."""
    from rlhfkit.labeling.webapp.db import add_items

    return add_items(engine, read_candidates(path))


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port ourselves, before the database is touched, so that a port in use or an
    address that is not this machine's is one line and leaves nothing behind; uvicorn then serves on this
    socket (left to itself it logs the failure and exits)."""
    if not 1 <= port <= 65535:
        raise RlhfkitError(f"--port {port}: a TCP port is 1 to 65535")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if isinstance(err, socket.gaierror):
            raise RlhfkitError(f"--host {host!r}: not an address or a known host name ({err.strerror})") from None
        if err.errno == errno.EADDRINUSE:
            raise RlhfkitError(f"--port {port}: already in use on {host}; stop what listens there or choose "
                               "another port") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise RlhfkitError(f"--host {host}: not an address of this machine") from None
        raise RlhfkitError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


def _log_to_stderr(name: str) -> None:
    """Send a logger's warnings to stderr as plain lines (uvicorn configures only its own loggers)."""
    import logging

    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@needs_web_extra("serve")
def serve_main(argv: list[str]) -> int:
    args = parse(ServeArgs, argv, prog="rlhfkit label serve")
    if args.labels_per_item < 1:
        raise RlhfkitError(f"--labels-per-item must be at least 1, got {args.labels_per_item}")
    import uvicorn

    from rlhfkit.labeling.webapp.app import create_app
    from rlhfkit.labeling.webapp.db import (add_items, check_location, database_errors, ensure_admin, open_db,
                                            purge_expired_sessions)

    check_location(args.db, create=True)  # a bad URL or a file that cannot be fails before anything else
    records = read_candidates(args.candidates) if args.candidates is not None else []
    sock = listening_socket(args.host, args.port)
    try:
        engine = open_db(args.db, create=True)
        with database_errors(engine.url):
            purge_expired_sessions(engine)
            if args.candidates is not None:
                print(f"loaded {add_items(engine, records)} new items from {args.candidates}", flush=True)
            token = ensure_admin(engine)
    except BaseException:
        sock.close()
        raise
    if token is not None:
        print(f"admin login token (shown once): {token}", flush=True)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving on http://{shown_host}:{args.port}/", flush=True)
    app = create_app(engine, args.labels_per_item, args.secure_cookies)
    _log_to_stderr("rlhfkit.labeling")  # failed logins (never the token), as one timestamped line each
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


@needs_web_extra("add-labeler")
def add_labeler_main(argv: list[str]) -> int:
    args = parse(AddLabelerArgs, argv, prog="rlhfkit label add-labeler")
    from rlhfkit.labeling.webapp.db import add_labeler, existing_db

    with existing_db(args.db) as engine:
        token = add_labeler(engine, args.name, is_admin=args.admin)
    print(token)
    print(f"login token for {args.name!r}; it is shown only once", file=sys.stderr)
    return 0


@needs_web_extra("export")
def export_main(argv: list[str]) -> int:
    args = parse(ExportArgs, argv, prog="rlhfkit label export")
    from rlhfkit.data import write_jsonl
    from rlhfkit.labeling.webapp.db import existing_db
    from rlhfkit.labeling.webapp.export import export_records

    if args.out.is_dir():
        raise RlhfkitError(f"--out {args.out}: is a directory; give the file to write")
    with existing_db(args.db) as engine:
        records = export_records(engine, args.format)
    try:
        n = write_jsonl(args.out, records)
    except OSError as err:  # named by the --out path, not by the temporary file beside it that failed
        raise RlhfkitError(f"--out {args.out}: cannot write: {err.strerror}") from None
    print(f"wrote {n} {args.format} records to {args.out}", file=sys.stderr)
    return 0


@needs_web_extra("revoke")
def revoke_main(argv: list[str]) -> int:
    args = parse(RevokeArgs, argv, prog="rlhfkit label revoke")
    from rlhfkit.labeling.webapp.db import existing_db, revoke_labeler

    with existing_db(args.db) as engine:
        token = revoke_labeler(engine, args.name, reissue=args.reissue)
    if token is not None:
        print(token)
        print(f"new login token for {args.name!r}; the old one no longer works and their sessions have ended; "
              "it is shown only once", file=sys.stderr)
    else:
        print(f"revoked {args.name!r}: their login token no longer works and their sessions have ended; their "
              "labels are kept", file=sys.stderr)
    return 0
