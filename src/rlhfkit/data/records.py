"""Records: validate each file format's records, read them (JSON Lines, parquet or a `datasets` name), write
them, and tell which kind of records a file holds.

Records are plain dicts (the JSON itself) once validated: they round-trip through `write_jsonl` unchanged. The
formats are described in docs/formats.md.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import zlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.data.chat import as_prompt, check_messages, pair_prompt, response_text
from rlhfkit.data.convert import (finite_numbers, is_finite_number, is_message_row, is_tree, map_columns, parse_columns,
                                  rows_to_trees, scored_to_ranking, tree_rankings)
from rlhfkit.data.files import open_text, resolve_source, utf8_error, write_atomic
from rlhfkit.errors import DataError, MissingPackageError, RlhfkitError
from rlhfkit.tracking import say

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


def _int_list(rec: dict, field: str, where: tuple[str, int | None]) -> list[int]:
    value = rec.get(field)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(*where, "expected a list of integers", field)
    return value


def validate(rec: Any, kind: str, where: tuple[str, int | None]) -> dict:
    """Check one record of `kind` and return it in rlhfkit's form, or raise DataError naming file:line and field.

    String records come back unchanged. Conversational fields are read as `rlhfkit.data.chat` describes: a prompt
    stays a string or a conversation (a list of messages ending with a user turn), every response becomes the
    text of its assistant turn, and a pair without a prompt gets the prompt its two sides share."""
    if not isinstance(rec, dict):
        raise DataError(*where, f"expected a JSON object, got {type(rec).__name__}")
    if kind == "corpus":
        _text(rec, "text", where)
    elif kind == "sft":
        if "messages" in rec:
            check_messages(rec["messages"], where, "messages")
            if not any(m["role"] == "assistant" for m in rec["messages"]):
                raise DataError(*where, "has no assistant turn: nothing to train on", "messages")
        else:
            rec = {**rec, "prompt": as_prompt(rec.get("prompt"), where),
                   "response": response_text(_present(rec, "response", where), where, "response")}
    elif kind == "prompts":
        rec = {**rec, "prompt": as_prompt(rec.get("prompt"), where, allow_empty=False)}
    elif kind == "candidates":
        rec = {**rec, "prompt": as_prompt(rec.get("prompt"), where, allow_empty=False),
               "responses": _responses(rec, where, min_len=1, allow_empty=True)}  # a policy may answer with EOS
    elif kind == "preferences":
        prompt, chosen, rejected = pair_prompt(rec, where)
        if chosen == rejected:
            raise DataError(*where, "chosen and rejected are identical: the pair carries no preference", "rejected")
        for field in ("score_chosen", "score_rejected"):
            if rec.get(field) is not None and not is_finite_number(rec[field]):
                raise DataError(*where, f"expected a finite number (or null), got {rec[field]!r}", field)
        rec = {**rec, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    elif kind == "rankings":
        rec = {**rec, "prompt": as_prompt(rec.get("prompt"), where),
               "responses": _responses(rec, where, min_len=2, allow_empty=False)}
        _validate_ranking(rec, where)
    else:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return rec


def _present(rec: dict, field: str, where: tuple[str, int | None]) -> Any:
    if field not in rec:
        raise DataError(*where, "missing (expected a string)", field)
    return rec[field]


def _responses(rec: dict, where: tuple[str, int | None], min_len: int, allow_empty: bool) -> list[str]:
    """A record's `responses` as texts: strings or assistant messages, at least min_len of them."""
    value = rec.get("responses")
    if not isinstance(value, list) or len(value) < min_len:
        raise DataError(*where, f"expected a list of at least {min_len} responses", "responses")
    return [response_text(item, where, f"responses[{i}]", allow_empty) for i, item in enumerate(value)]


def normalize(rec: Any, kind: str, where: tuple[str, int | None]) -> list[dict]:
    """The records of `kind` one raw record holds, in rlhfkit's form: usually one (`validate`); none for a
    preference whose label says `"tie": true` (a judge's kept tie) and, for rankings, for responses whose scores
    all tie, and one per ranked reply set of an OpenAssistant tree
    (`rlhfkit.data.convert`)."""
    if kind == "rankings" and is_tree(rec):
        return [validate(r, kind, where) for r in tree_rankings(rec, where)]
    if kind == "preferences" and isinstance(rec, dict) and isinstance(rec.get("label"), dict) \
            and rec["label"].get("tie") is True:
        validate(rec, kind, where)  # a tie is still checked, then carries no preference
        return []
    if kind == "rankings" and isinstance(rec, dict) and "ranking" not in rec and "scores" in rec:
        ranked = scored_to_ranking(rec, where)
        return [] if ranked is None else [validate(ranked, kind, where)]
    return [validate(rec, kind, where)]


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_ranking(rec: dict, where: tuple[str, int | None]) -> None:
    """The ranking, likert and scores of a record whose prompt and responses `validate` has already read."""
    responses = rec["responses"]
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
    if rec.get("scores") is not None:
        finite_numbers(rec["scores"], len(responses), where, "scores")


# ------------------------------------------------------------------------------------------------- reading
def _json_error(line: str, err: json.JSONDecodeError) -> str:
    """What is wrong with one JSONL line (line ending already stripped): the column as an editor counts it, and
    a hint when the line stops inside a record (a record wrapped over several lines)."""
    message = f"not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})"  # "...starting at" + column
    if err.pos >= len(line.rstrip()):
        message += "; the line ends inside a record: JSON Lines needs each record on one line"
    return message


class _NonFinite(ValueError):
    """NaN or Infinity in a JSON line: Python's json module reads them, JSON does not have them."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _iter_jsonl(path: Path, problems: list[DataError] | None = None) -> Iterator[tuple[Any, tuple[str, int]]]:
    """(object, (file, line)) per non-blank line. A line that is not JSON raises DataError, or, given a
    `problems` list, is added to it and skipped."""
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                line = line.rstrip("\r\n")
                try:
                    yield json.loads(line, parse_constant=_refuse_constant), (str(path), lineno)
                    continue
                except json.JSONDecodeError as err:
                    problem = DataError(str(path), lineno, _json_error(line, err))
                except _NonFinite as err:
                    problem = DataError(str(path), lineno, f"{err} is not valid JSON (JSON has no NaN or infinity: "
                                        "write a number or null)")
                if problems is None:
                    raise problem
                problems.append(problem)
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # EOFError: a gzip file cut short
        raise DataError(str(path), None, f"not a readable gzip file ({err or 'it ends early'})") from None


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


@contextlib.contextmanager
def _no_progress_bars(datasets: Any) -> Iterator[None]:
    """Hide `datasets`' progress bars for the duration: it draws one while it converts any source ("Generating
    train split"), which would put a second line before a bad row's one-line error."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


def _iter_table(source: Path | str) -> Iterator[tuple[Any, tuple[str, int]]]:
    """Rows of a parquet file (a Path) or a `datasets` name (optionally `name:split`), numbered from 1."""
    try:
        import datasets  # heavy: imported only for these sources
    except ImportError:
        raise MissingPackageError("datasets", f"reading {source} (a parquet file or a datasets name)",
                                  no_deps=False) from None
    # datasets and pyarrow raise many types; the user needs the message and the source, not the type. datasets
    # and the hub client also log failures and retries before raising: quiet, since the one line below says it
    with _quiet_logger("datasets"), _quiet_logger("huggingface_hub"), _no_progress_bars(datasets):
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


def raw_rows(source: str | os.PathLike, columns: str | Mapping | None = None,
             problems: list[DataError] | None = None) -> Iterator[tuple[Any, tuple[str, int]]]:
    """A source's rows as read, unvalidated, with `--data.columns` applied (`rlhfkit.data.convert`), each with its
    (file or source name, line or row number). Given a `problems` list, a JSONL line that is not JSON or a row
    missing a mapped column is added to it and skipped instead of raised (`rlhfkit data check`).

    The source is resolved by `resolve_source`: a missing path or a directory fails at once, naming it; only a
    bare `name` / `owner/name` (optionally `:split`) that is no local path is read with `datasets`."""
    resolved = resolve_source(source)
    mapping = parse_columns(columns)
    rows = (_iter_jsonl(resolved, problems) if isinstance(resolved, Path) and resolved.suffix != ".parquet"
            else _iter_table(resolved))
    for row, where in rows:
        try:
            yield map_columns(row, mapping, where), where
        except DataError as err:
            if problems is None:
                raise
            problems.append(err)


def iter_records(source: str | os.PathLike, kind: str, columns: str | Mapping | None = None,
                 skip_invalid: bool = False) -> Iterator[dict]:
    """Yield validated records of `kind` from a JSONL path, a parquet path or a `datasets` name."""
    for rec, _where in located_records(source, kind, columns, skip_invalid):
        yield rec


def located_records(source: str | os.PathLike, kind: str, columns: str | Mapping | None = None,
                    skip_invalid: bool = False) -> Iterator[tuple[dict, tuple[str, int]]]:
    """As iter_records, each record with where it came from: (file or source name, line or row number), so a
    caller's own checks can name `file:line` too (DataError(*where, ...)).

    Records are read into rlhfkit's form by `normalize`: one raw record may give several rankings (an
    OpenAssistant tree; a flat OpenAssistant message table is gathered into trees first) or none (responses whose
    scores all tie; counted and said at the end). The first invalid record raises its DataError; with
    skip_invalid (`--data.invalid skip`), invalid records and JSON lines are left out, and one line at the end
    says how many and names the first."""
    problems: list[DataError] | None = [] if skip_invalid else None
    rows = raw_rows(source, columns, problems)
    if kind == "rankings":
        first = next(rows, None)
        rows = itertools.chain([first] if first else [], rows)
        if first and is_message_row(first[0]):
            rows = rows_to_trees(rows)
    empty = 0
    for raw, where in rows:
        try:
            records = normalize(raw, kind, where)
        except DataError as err:
            if problems is None:
                raise
            problems.append(err)
            continue
        empty += not records
        for rec in records:
            yield rec, where
    if empty:
        say(f"{source}: {empty} records hold no preference (a tie, every score equal, or no ranked replies): "
            "skipped")
    if problems:
        say(f"warning: {source}: {len(problems)} invalid records skipped (--data.invalid skip); the first: "
            f"{problems[0]}")


def read_located(source: str | os.PathLike, kind: str, columns: str | Mapping | None = None,
                 skip_invalid: bool = False) -> list[tuple[dict, tuple[str, int]]]:
    """All validated records of `kind`, each with its (file, line) as `located_records` gives them; an empty
    source (or one with no valid record) is an error (nothing to work on)."""
    located = list(located_records(source, kind, columns, skip_invalid))
    if not located:
        raise DataError(str(source), None, f"no {kind} records found")
    return located


def read_records(source: str | os.PathLike, kind: str, columns: str | Mapping | None = None,
                 skip_invalid: bool = False) -> list[dict]:
    """All validated records of `kind`; an empty source is an error (nothing to train on)."""
    return [rec for rec, _where in read_located(source, kind, columns, skip_invalid)]


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
    tier (C(K, 2) pairs without ties). Tied responses are not a preference, nor are pairs of identical text. A
    ranking with `scores` gives each pair its two (`score_chosen`, `score_rejected`)."""
    responses, scores = rec["responses"], rec.get("scores")
    label = dict(rec.get("label") or {}, from_ranking=True)
    return [
        {"prompt": rec["prompt"], "chosen": responses[c], "rejected": responses[r], "label": label,
         **({"score_chosen": scores[c], "score_rejected": scores[r]} if scores else {})}
        for t, better in enumerate(ranking_tiers(rec["ranking"]))
        for c in better
        for worse in ranking_tiers(rec["ranking"])[t + 1:]
        for r in worse
        if responses[c] != responses[r]
    ]


# -------------------------------------------------------------------------------------------- file kinds
def record_kind(rec: Any, allowed: Sequence[str] = KINDS) -> str | None:
    """Which kind in `allowed` a raw record reads as, by its keys (None: none of them). `ranking`, an OpenAssistant
    tree or message row: rankings; `chosen` / `rejected`: preferences; `responses`: candidates, or rankings when
    it has `scores` and rankings are allowed; `messages` / `response`: sft; `prompt`: prompts; `text`: corpus."""
    if not isinstance(rec, dict):
        return None
    if "ranking" in rec or is_tree(rec) or is_message_row(rec):
        kinds = ["rankings"]
    elif "chosen" in rec or "rejected" in rec:
        kinds = ["preferences"]
    elif "responses" in rec:
        kinds = ["rankings", "candidates"] if "scores" in rec else ["candidates"]
    elif "messages" in rec or "response" in rec:
        kinds = ["sft"]
    elif "prompt" in rec:
        kinds = ["prompts"]
    else:
        kinds = ["corpus"] if "text" in rec else []
    return next((k for k in kinds if k in allowed), None)


def detect_kind(source: str | os.PathLike | None, allowed: Sequence[str], fmt: str = "auto",
                unreadable: str | None = None, columns: str | Mapping | None = None) -> str:
    """The record kind of `source`: `fmt` unless it is "auto", else `record_kind` of its first record (any source:
    JSONL, parquet or a `datasets` name, after `columns` are mapped).

    No source gives `unreadable`; with unreadable=None it raises RlhfkitError asking for --format. A first record
    of no kind in `allowed` also gives `unreadable` (the reader then names its missing field with file:line);
    with unreadable=None it raises DataError naming file:line. A missing path, a directory or a malformed first
    line fails as the reader fails on it; an empty source gives allowed[0] (the reader says it is empty).
    """
    if fmt != "auto":
        return fmt
    if not source:
        if unreadable is not None:
            return unreadable
        raise RlhfkitError(f"no data to tell the record kind of: pass --format {'|'.join(allowed)}")
    first = next(raw_rows(source, columns), None)
    if first is None:
        return allowed[0]
    kind = record_kind(first[0], allowed)
    if kind is None:
        if unreadable is not None:
            return unreadable
        raise DataError(*first[1], f"expected {' or '.join(allowed)} records (see docs/formats.md)")
    return kind
