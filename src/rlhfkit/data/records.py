"""Records: validate each file format's records, read them (JSON Lines, parquet or a `datasets` name), write
them, and tell which kind of records a file holds.

Records are plain dicts (the JSON itself) once validated: they round-trip through `write_jsonl` unchanged. The
formats are described in docs/formats.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.data.files import resolve_source, utf8_error, write_atomic
from rlhfkit.errors import DataError, MissingPackageError, RlhfkitError

KINDS = ("corpus", "sft", "prompts", "candidates", "preferences", "rankings")


# ----------------------------------------------------------------------------------------------- validation
def _text(rec: dict, field: str, where: tuple[str, int | None], allow_empty: bool = False) -> str:
    if field not in rec:
        raise DataError(*where, "missing (expected a string)", field)
    value = rec[field]
    if not isinstance(value, str):
        raise DataError(*where, f"expected a string, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise DataError(*where, "is empty", field)
    return value


def _text_list(rec: dict, field: str, where: tuple[str, int | None], min_len: int,
               allow_empty: bool = False) -> list[str]:
    value = rec.get(field)
    if not isinstance(value, list) or len(value) < min_len:
        raise DataError(*where, f"expected a list of at least {min_len} strings", field)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not (allow_empty or item.strip()):
            raise DataError(*where, f"item {i} must be a {'' if allow_empty else 'non-empty '}string", field)
    return value


def _int_list(rec: dict, field: str, where: tuple[str, int | None]) -> list[int]:
    value = rec.get(field)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(*where, "expected a list of integers", field)
    return value


def _validate_messages(rec: dict, where: tuple[str, int | None]) -> None:
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(*where, "expected a non-empty list of {role, content}", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant", "system"):
            raise DataError(*where, f"item {i}: role must be user, assistant or system", "messages")
        _text(msg, "content", where)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(*where, "has no assistant turn: nothing to train on", "messages")


def validate(rec: Any, kind: str, where: tuple[str, int | None]) -> dict:
    """Check one record of `kind`; returns it unchanged or raises DataError naming file:line and field."""
    if not isinstance(rec, dict):
        raise DataError(*where, f"expected a JSON object, got {type(rec).__name__}")
    if kind == "corpus":
        _text(rec, "text", where)
    elif kind == "sft":
        if "messages" in rec:
            _validate_messages(rec, where)
        else:
            _text(rec, "prompt", where, allow_empty=True)
            _text(rec, "response", where)
    elif kind == "prompts":
        _text(rec, "prompt", where)
    elif kind == "candidates":
        _text(rec, "prompt", where)
        _text_list(rec, "responses", where, min_len=1, allow_empty=True)  # a policy may answer with EOS at once
    elif kind == "preferences":
        _text(rec, "prompt", where, allow_empty=True)
        if _text(rec, "chosen", where) == _text(rec, "rejected", where):
            raise DataError(*where, "chosen and rejected are identical: the pair carries no preference", "rejected")
    elif kind == "rankings":
        _validate_ranking(rec, where)
    else:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return rec


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_ranking(rec: dict, where: tuple[str, int | None]) -> None:
    _text(rec, "prompt", where, allow_empty=True)
    responses = _text_list(rec, "responses", where, min_len=2)
    ranking = rec.get("ranking")
    if not isinstance(ranking, list):
        raise DataError(*where, "expected a list of response indices (a tie: a list of indices)", "ranking")
    for i, item in enumerate(ranking):
        if isinstance(item, list):
            if not all(_is_index(v) for v in item):
                raise DataError(*where, f"item {i}: a tie must list integers, got {item}", "ranking")
            if len(item) < 2:
                raise DataError(*where, f"item {i}: a tie lists at least 2 response indices, got {item}", "ranking")
        elif not _is_index(item):
            raise DataError(*where, f"item {i}: expected an integer or a list of tied integers, got {item!r}",
                            "ranking")
    tiers = ranking_tiers(ranking)
    if sorted(i for tier in tiers for i in tier) != list(range(len(responses))):
        raise DataError(*where, f"must be a permutation of 0..{len(responses) - 1} (ties flattened), got {ranking}",
                        "ranking")
    if len(tiers) < 2:
        raise DataError(*where, "every response is tied: the ranking carries no preference", "ranking")
    if "likert" in rec and rec["likert"] is not None:
        likert = _int_list(rec, "likert", where)
        if len(likert) != len(responses) or not all(1 <= s <= 7 for s in likert):
            raise DataError(*where, "needs one score in 1..7 per response", "likert")


# ------------------------------------------------------------------------------------------------- reading
def _json_error(line: str, err: json.JSONDecodeError) -> str:
    """What is wrong with one JSONL line (line ending already stripped): the column as an editor counts it, and
    a hint when the line stops inside a record (a record wrapped over several lines)."""
    message = f"not valid JSON ({err.msg} at column {err.colno})"
    if err.pos >= len(line.rstrip()):
        message += "; the line ends inside a record: JSON Lines needs each record on one line"
    return message


class _NonFinite(ValueError):
    """NaN or Infinity in a JSON line: Python's json module reads them, JSON does not have them."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _iter_jsonl(path: Path) -> Iterator[tuple[Any, tuple[str, int]]]:
    # utf-8-sig: a byte-order mark at the start of the file (Windows editors write one) is read away
    try:
        with path.open("r", encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                line = line.rstrip("\r\n")
                try:
                    yield json.loads(line, parse_constant=_refuse_constant), (str(path), lineno)
                except json.JSONDecodeError as err:
                    raise DataError(str(path), lineno, _json_error(line, err)) from None
                except _NonFinite as err:
                    raise DataError(str(path), lineno, f"{err} is not valid JSON (JSON has no NaN or infinity: "
                                    "write a number or null)") from None
    except UnicodeDecodeError:
        raise utf8_error(path) from None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger (errors included) for the duration."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _iter_table(source: Path | str) -> Iterator[tuple[Any, tuple[str, int]]]:
    """Rows of a parquet file (a Path) or a `datasets` name (optionally `name:split`), numbered from 1."""
    try:
        import datasets  # heavy: imported only for these sources
    except ImportError:
        raise MissingPackageError("datasets", f"reading {source} (a parquet file or a datasets name)",
                                  no_deps=False) from None
    # datasets and pyarrow raise many types; the user needs the message and the source, not the type. datasets
    # and the hub client also log failures and retries before raising: quiet, since the one line below says it
    with _quiet_logger("datasets"), _quiet_logger("huggingface_hub"):
        if isinstance(source, Path):
            try:
                table = datasets.Dataset.from_parquet(str(source))
            except Exception as err:
                raise DataError(str(source), None, f"not a readable parquet file ({err})") from None
        else:
            name, _, split = source.partition(":")
            try:
                table = datasets.load_dataset(name, split=split or "train")
            except Exception as err:
                raise DataError(source, None, f"no such local file, and not loadable as a datasets name ({err})") \
                    from None
    for i, row in enumerate(table, start=1):
        yield row, (str(source), i)


def iter_records(source: str | os.PathLike, kind: str) -> Iterator[dict]:
    """Yield validated records of `kind` from a JSONL path, a parquet path or a `datasets` name."""
    for rec, _where in located_records(source, kind):
        yield rec


def located_records(source: str | os.PathLike, kind: str) -> Iterator[tuple[dict, tuple[str, int]]]:
    """As iter_records, each record with where it came from: (file or source name, line or row number), so a
    caller's own checks can name `file:line` too (DataError(*where, ...)).

    The source is resolved by `resolve_source`: a missing path or a directory fails at once, naming it; only a
    bare `name` / `owner/name` that is no local path is read with `datasets`."""
    resolved = resolve_source(source)
    if isinstance(resolved, Path) and resolved.suffix != ".parquet":
        rows = _iter_jsonl(resolved)
    else:
        rows = _iter_table(resolved)
    for rec, where in rows:
        yield validate(rec, kind, where), where


def read_located(source: str | os.PathLike, kind: str) -> list[tuple[dict, tuple[str, int]]]:
    """All validated records of `kind`, each with its (file, line) as `located_records` gives them; an empty
    source is an error (nothing to work on)."""
    located = list(located_records(source, kind))
    if not located:
        raise DataError(str(source), None, f"no {kind} records found")
    return located


def read_records(source: str | os.PathLike, kind: str) -> list[dict]:
    """All validated records of `kind`; an empty source is an error (nothing to train on)."""
    return [rec for rec, _where in read_located(source, kind)]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as JSON Lines atomically (`rlhfkit.data.files.write_atomic`: temp file + rename, nothing
    left behind on failure); returns the number written. The file gets the mode a plain `open(path, "w")` gives a
    new file (0666 minus the umask). A record holding NaN or infinity is refused: JSON has neither."""

    def write(f: Any) -> int:
        n = 0
        for n, rec in enumerate(records, start=1):
            try:
                f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
            except ValueError as err:  # allow_nan=False: NaN or infinity in the record
                raise RlhfkitError(f"{path}: record {n} cannot be written as JSON ({err})") from None
        return n

    return write_atomic(path, write)


def ranking_tiers(ranking: Sequence[int | Sequence[int]]) -> list[list[int]]:
    """A validated `ranking` as tiers of response indices, best first: each integer is a tier of its own, each
    list a tie. [2, [0, 1], 3] -> [[2], [0, 1], [3]]."""
    return [list(item) if isinstance(item, (list, tuple)) else [item] for item in ranking]


def ranking_to_pairs(rec: dict) -> list[dict]:
    """Expand a ranking into its preference records, best first: every response over every response of a lower
    tier (C(K, 2) pairs without ties). Tied responses are not a preference, nor are pairs of identical text."""
    tiers = [[rec["responses"][i] for i in tier] for tier in ranking_tiers(rec["ranking"])]
    label = dict(rec.get("label") or {}, from_ranking=True)
    return [
        {"prompt": rec["prompt"], "chosen": chosen, "rejected": rejected, "label": label}
        for t, better in enumerate(tiers)
        for chosen in better
        for worse in tiers[t + 1:]
        for rejected in worse
        if chosen != rejected
    ]


# -------------------------------------------------------------------------------------------- file kinds
def detect_kind(source: str | os.PathLike | None, allowed: Sequence[str], fmt: str = "auto",
                unreadable: str | None = None) -> str:
    """The record kind of `source`: `fmt` unless it is "auto", else read from the first JSONL record ("ranking":
    rankings, "chosen": preferences, "responses": candidates).

    A source that cannot be sniffed (none given, parquet, a `datasets` name) gives `unreadable`; with
    unreadable=None it raises RlhfkitError asking for --format. A missing path or a directory is refused as the
    reader refuses it (`resolve_source`). A first record of no kind in `allowed` also gives `unreadable` (the
    reader then names its missing field with file:line); with unreadable=None it raises DataError naming
    file:line. A malformed or missing first record gives allowed[0]: the reader reports it with file:line.
    """
    if fmt != "auto":
        return fmt
    path = resolve_source(source) if source else None
    if not isinstance(path, Path) or path.suffix == ".parquet":
        if unreadable is not None:
            return unreadable
        raise RlhfkitError(f"cannot tell the record kind of '{source}': pass --format {'|'.join(allowed)}")
    lineno, line = 0, ""
    try:
        with path.open(encoding="utf-8-sig") as f:  # as the reader: a byte-order mark at the start is read away
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    break
        rec = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return allowed[0]  # the reader reports the bad line with file:line
    kind = ("rankings" if "ranking" in rec else "preferences" if "chosen" in rec else
            "candidates" if "responses" in rec else None) if isinstance(rec, dict) else None
    if kind not in allowed:
        if unreadable is not None:
            return unreadable
        raise DataError(str(source), lineno, f"expected {' or '.join(allowed)} records (see docs/formats.md)")
    return kind
