"""`rlhfkit label serve | add-labeler | export`: the web app where people rank and score responses.

Follows InstructGPT's labelling interface (Ouyang et al. 2022, appendix B): a prompt, K responses, a 1-7 score
for each, a ranking of all K (only the ranking trains the reward model), and flags for harmful or untrue
responses. The app lives in rlhfkit.labeling.webapp; this module is its command line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from rlhfkit.config import parse
from rlhfkit.errors import DataError, RlhfkitError

DEFAULT_DB = "sqlite:///labels.db"


@dataclass(frozen=True)
class ServeArgs:
    """Serve the labelling app."""

    candidates: Path | None = None
    """candidates JSONL ({"prompt", "responses": [2..9 str], "policy"}) to load; loading it again adds nothing."""
    db: str = DEFAULT_DB
    """database URL: sqlite:///FILE (WAL mode) or postgresql://USER@HOST:PORT/DB."""
    host: str = "127.0.0.1"
    """address to listen on; keep the loopback default unless a TLS proxy sits in front."""
    port: int = 8000
    """TCP port to listen on."""
    labels_per_item: int = 3
    """an item is offered until it holds this many labels from different labelers."""
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


def load_candidates(engine, path: Path) -> int:
    """Read a candidates file (validated by rlhfkit.data) into the database; returns the number of new items."""
    from rlhfkit.data import read_records
    from rlhfkit.labeling.webapp.db import MAX_K, MIN_K, add_items

    records = read_records(path, "candidates")
    for n, rec in enumerate(records, start=1):
        if not MIN_K <= len(rec["responses"]) <= MAX_K:
            raise DataError(str(path), None, f"record {n} has {len(rec['responses'])} responses; the labelling "
                            f"page shows {MIN_K} to {MAX_K}", "responses")
    return add_items(engine, records)


def serve_main(argv: list[str]) -> int:
    args = parse(ServeArgs, argv, prog="rlhfkit label serve")
    import uvicorn

    from rlhfkit.labeling.webapp.app import create_app
    from rlhfkit.labeling.webapp.db import ensure_admin, open_db

    if args.labels_per_item < 1:
        raise RlhfkitError(f"--labels-per-item must be at least 1, got {args.labels_per_item}")
    engine = open_db(args.db)
    if args.candidates is not None:
        print(f"loaded {load_candidates(engine, args.candidates)} new items from {args.candidates}", flush=True)
    token = ensure_admin(engine)
    if token is not None:
        print(f"admin login token (shown once): {token}", flush=True)
    print(f"serving on http://{args.host}:{args.port}/", flush=True)
    app = create_app(engine, args.labels_per_item, args.secure_cookies)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_labeler_main(argv: list[str]) -> int:
    args = parse(AddLabelerArgs, argv, prog="rlhfkit label add-labeler")
    from rlhfkit.labeling.webapp.db import add_labeler, open_db

    token = add_labeler(open_db(args.db), args.name, is_admin=args.admin)
    print(token)
    print(f"login token for {args.name!r}; it is shown only once", file=sys.stderr)
    return 0


def export_main(argv: list[str]) -> int:
    args = parse(ExportArgs, argv, prog="rlhfkit label export")
    from rlhfkit.data import write_jsonl
    from rlhfkit.labeling.webapp.db import open_db
    from rlhfkit.labeling.webapp.export import export_records

    n = write_jsonl(args.out, export_records(open_db(args.db), args.format))
    print(f"wrote {n} {args.format} records to {args.out}", file=sys.stderr)
    return 0
