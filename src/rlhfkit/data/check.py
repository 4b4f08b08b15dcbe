"""`rlhfkit data check FILE`: what a data file is read as, how many of its records are valid, and the first
problems, each named `file:line`, before a run spends time on it.

Every row is read as the training readers read it (`raw_rows` with `--columns`, then `normalize`), but a bad
record is counted and listed instead of stopping the reading. Each record is also put under its *shape*
(`record_shape`): which of the accepted layouts it has (TRL's conversational format, UltraFeedback's full
conversations, HH-RLHF's full texts, OpenAssistant trees, ...), so a file read in a way its author did not mean
shows it. A file that cannot be read at all (missing, not UTF-8, an empty file) still fails at once in one line.

The exit status is 0 only when every record is valid and some record comes out of the reading, so a script can
gate a run on it; otherwise the report is printed and one line `rlhfkit: error: ...` names the first problem.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import tyro

from rlhfkit.data.chat import ASSISTANT_MARKERS, prompt_key, shared_marker
from rlhfkit.data.convert import is_message_row, is_tree, rows_to_trees
from rlhfkit.data.records import normalize, raw_rows, record_kind
from rlhfkit.errors import DataError, RlhfkitError

TABLE = "OpenAssistant message table"
"""The shape of every tree gathered from a flat OpenAssistant message table (its rows are not records)."""


# ----------------------------------------------------------------------------------------------- shapes
def _is_messages(value: Any) -> bool:
    """A prompt or response given as messages: a list, or one message object (TRL allows one for a reply)."""
    return isinstance(value, list) or isinstance(value, dict) and "role" in value


def _has_history(value: Any) -> bool:
    """Messages before the reply: a list of more than one message (`chat.split_reply` reads the last one as the
    reply and the rest as the conversation it continues)."""
    return isinstance(value, list) and len(value) > 1


def _preference_shape(rec: dict) -> str:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if "prompt" in rec:
        if _has_history(chosen) or _has_history(rejected):
            shape = "full conversations (history repeats the prompt, UltraFeedback)"
        elif any(map(_is_messages, (rec["prompt"], chosen, rejected))):
            shape = "conversational (prompt + assistant messages, TRL)"
        else:  # strings, or values of no accepted type (the reader names them)
            shape = "strings"
    elif isinstance(chosen, str) and isinstance(rejected, str):
        start, marker = shared_marker(chosen, rejected)
        # HH-RLHF's marker is plain text; the others are chat templates' assistant headers (chat.ASSISTANT_MARKERS)
        shape = ("implicit prompt, full texts (no shared assistant marker)" if start < 0
                 else f"implicit prompt, full texts (marker {marker!r})" if marker == ASSISTANT_MARKERS[0]
                 else f"implicit prompt, full texts (chat template marker {marker!r})")
    else:
        shape = "implicit prompt, conversations"
    if rec.get("score_chosen") is not None or rec.get("score_rejected") is not None:
        shape += ", scored (score_chosen/score_rejected)"
    return shape


def record_shape(raw: Any, kind: str) -> str:
    """Which accepted layout of `kind` a raw record (as read, columns mapped) has, by its fields and their types
    alone, so an invalid record has a shape too: the layouts `rlhfkit.data.chat` and `rlhfkit.data.convert` read.

        preferences   strings | conversational (prompt + assistant messages, TRL) | full conversations (history
                      repeats the prompt, UltraFeedback) | implicit prompt, conversations | implicit prompt, full
                      texts (marker ... / chat template marker ...); ", scored (score_chosen/score_rejected)"
                      added when a pair carries scores
        rankings      ranking | scores -> ranking | OpenAssistant tree (a flat table's trees: `TABLE`)
        sft           pair | conversational prompt | messages
        candidates    strings | conversational;  prompts: string | conversation;  corpus: text
    """
    if not isinstance(raw, dict):
        return "not a JSON object"
    prompt = raw.get("prompt")
    if kind == "preferences":
        return _preference_shape(raw)
    if kind == "rankings":
        if is_tree(raw):
            return "OpenAssistant tree"
        # normalize reads scores only when there is no ranking
        return "scores -> ranking" if "scores" in raw and "ranking" not in raw else "ranking"
    if kind == "sft":
        return "messages" if "messages" in raw else "conversational prompt" if isinstance(prompt, list) else "pair"
    if kind == "candidates":
        responses = raw.get("responses")
        given = [prompt, *(responses if isinstance(responses, list) else [])]
        return "conversational" if any(map(_is_messages, given)) else "strings"
    if kind == "prompts":
        return "conversation" if isinstance(prompt, list) else "string"
    return "text"


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Survey:
    """What reading a source found. A record is a row, or a tree of a flat OpenAssistant table."""

    source: str
    kind: str | None
    """None: no record could be read to tell the kind by."""
    detected: bool
    """The kind was told from the first record (--format auto)."""
    shapes: Counter = field(default_factory=Counter)
    """Records per shape, valid or not."""
    invalid_shapes: Counter = field(default_factory=Counter)
    """Invalid records per shape."""
    fields: Counter = field(default_factory=Counter)
    """Rows having each field (after --columns), in the order first seen."""
    problems: list[DataError] = field(default_factory=list)
    """Every invalid record's error: from `normalize`, or a row that could not be read (not JSON, a mapped column
    missing, a row of a message table that is no message)."""
    produced: int = 0
    """Records of `kind` the valid records give (a tree several rankings, tied scores none)."""
    empty: int = 0
    """Valid records that give no record: every score equal, or no ranked replies."""
    prompts: set = field(default_factory=set)
    """Digests of the produced records' distinct prompts."""
    with_prompt: int = 0
    conversations: int = 0
    """Produced records with a prompt, and those whose prompt is a conversation."""
    table_rows: int = 0
    """Message rows of a flat OpenAssistant table (0: not one)."""
    table_nodes: int = 0
    """The table's messages reached from a root; the others reply to a message not in the table."""

    @property
    def records(self) -> int:
        """Records read: those given a shape, and the rows that could not be read as one (the problems that are
        not a shaped record's)."""
        return sum(self.shapes.values()) + len(self.problems) - sum(self.invalid_shapes.values())


def _prompt_digest(prompt: Any) -> bytes:
    """A short fixed-size identity of a prompt: a large set (HH-RLHF's multi-turn transcripts) is counted without
    keeping every prompt's text in memory; 16 bytes make a collision negligible."""
    return hashlib.blake2b(prompt_key(prompt).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _fields_counted(rows: Iterable[tuple[Any, Any]], fields: Counter) -> Iterator[tuple[Any, Any]]:
    """The rows unchanged, counting each dict row's fields on the way."""
    for row, where in rows:
        if isinstance(row, dict):
            fields.update(row.keys())
        yield row, where


def _message_rows(rows: Iterable[tuple[Any, Any]], found: Survey) -> Iterator[tuple[Any, Any]]:
    """A message table's rows; a row that is no message is a problem of its own rather than the end of the
    reading (`rows_to_trees` raises on it)."""
    for row, where in rows:
        if is_message_row(row):
            found.table_rows += 1
            yield row, where
        else:
            found.problems.append(DataError(*where, "expected a message row (message_id, parent_id, role, text) like "
                                                    "the rows before"))


def _tree_size(root: dict) -> int:
    """Messages in a tree `rows_to_trees` gathered (it refuses a repeated message id, so there is no loop; each
    node is still counted once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack += node["replies"]
    return len(seen)


def _first_kind(first: tuple[Any, Any]) -> str:
    """The kind of the first readable record, or DataError naming its fields so --columns can map them."""
    raw, where = first
    kind = record_kind(raw)
    if kind is None:
        what = (f"its fields: {', '.join(map(str, raw)) or 'none'}" if isinstance(raw, dict)
                else f"not a JSON object but a {type(raw).__name__}")
        raise DataError(*where, f"a record of no known kind ({what}): map fields with --columns "
                                "prompt=COLUMN,... (docs/formats.md) or pass --format")
    return kind


def survey(source: str | os.PathLike, fmt: str = "auto", columns: str = "") -> Survey:
    """Read every record of `source` as `fmt` (auto: the kind of its first readable record), collecting what
    `Survey` holds; problems come sorted by line. A source that cannot be read at all raises RlhfkitError (a
    missing file, bytes that are not UTF-8, no rows at all), as the training readers do."""
    found = Survey(str(source), None if fmt == "auto" else fmt, detected=fmt == "auto")
    rows = _fields_counted(raw_rows(source, columns, problems=found.problems), found.fields)
    first = next(rows, None)
    if first is None:
        if not found.problems:
            raise DataError(str(source), None, "no records found")
        return found  # every line unreadable: nothing to tell the kind by
    kind = found.kind = found.kind or _first_kind(first)
    rows = itertools.chain([first], rows)
    table = kind == "rankings" and is_message_row(first[0])  # as `records.located_records` reads it
    if table:
        rows = rows_to_trees(_message_rows(rows, found))
    for raw, where in rows:
        shape = TABLE if table else record_shape(raw, kind)
        found.shapes[shape] += 1
        if table:
            found.table_nodes += _tree_size(raw["prompt"])
        try:
            records = normalize(raw, kind, where)
        except DataError as err:
            found.problems.append(err)
            found.invalid_shapes[shape] += 1
            continue
        found.produced += len(records)
        found.empty += not records
        for rec in records:
            if "prompt" in rec:
                found.prompts.add(_prompt_digest(rec["prompt"]))
                found.with_prompt += 1
                found.conversations += isinstance(rec["prompt"], list)
    # a message table is read whole before its trees: its unreadable rows were listed before the trees' problems
    found.problems.sort(key=lambda err: (err.line is None, err.line or 0))
    return found


# ---------------------------------------------------------------------------------------------- the report
def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report_lines(found: Survey, show: int) -> list[str]:
    """The report, one string per line: source, kind, shapes with counts, fields, valid and invalid records, the
    records they give, distinct prompts, and the first `show` problems as `file:line: field 'x': what`."""
    how = "told by the first record's fields; --format to choose" if found.detected else "--format"
    lines = [f"source:   {found.source}",
             f"kind:     {found.kind} ({how})" if found.kind else "kind:     unknown (no record could be read)"]
    if found.shapes:
        lines.append("shapes:")
        width = len(str(max(found.shapes.values())))
        for shape, n in found.shapes.most_common():
            bad = found.invalid_shapes[shape]
            lines.append(f"  {n:>{width}}  {shape}" + (f"  ({bad} invalid)" if bad else ""))
    if found.table_rows:
        left_out = found.table_rows - found.table_nodes
        lines.append(f"table:    {_count(found.table_rows, 'message row')} in "
                     f"{_count(sum(found.shapes.values()), 'tree')}"
                     + (f"; {left_out} reply to a message not in the table: left out" if left_out else ""))
    if found.fields:
        lines.append("fields:   " + ", ".join(f"{name} ({n})" for name, n in found.fields.items()))
    invalid = len(found.problems)
    lines.append(f"records:  {found.records - invalid} valid, {invalid} invalid, of {found.records}")
    if found.kind:
        gives = _count(found.produced, f"{found.kind} record")
        if found.empty:
            gives += (f"; {_count(found.empty, 'record')} with no preference (every score equal, or no ranked "
                      "replies): none from them")
        lines.append(f"gives:    {gives}")
    if found.with_prompt:
        lines.append(f"prompts:  {len(found.prompts)} distinct; {found.conversations} of {found.with_prompt} "
                     f"records ({_percent(found.conversations, found.with_prompt)}) have a conversation prompt")
    if found.problems and show:
        lines.append(f"problems (first {min(show, invalid)} of {invalid}):")
        lines += [f"  {err}" for err in found.problems[:show]]
    return lines


# ------------------------------------------------------------------------------------------------- command
@dataclass(frozen=True)
class CheckArgs:
    """What a data file is read as, how many records are valid, the first problems (exit 0: all valid)."""

    file: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="FILE")]]
    """A JSONL file, a parquet file or a `datasets` name (`name` or `owner/name`, optionally `:split`)."""
    format: Literal["auto", "corpus", "sft", "prompts", "candidates", "preferences", "rankings"] = "auto"
    """The record kind to read it as; auto: the kind of the first readable record, told by its fields."""
    columns: str = ""
    """Read fields from other columns, as `--data.columns` of the training commands: `prompt=question,chosen=good`;
    `field=a+b` gathers columns into a list (`responses=human_ref_A+human_ref_B,scores=score_A+score_B`)."""
    show: int = 10
    """How many problems to list (the first ones, by line)."""


def main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(CheckArgs, argv, prog="rlhfkit data check")
    if args.show < 0:
        raise RlhfkitError(f"--show must be >= 0, got {args.show}")
    found = survey(args.file, args.format, args.columns)
    print("\n".join(report_lines(found, args.show)))
    if found.problems:
        raise RlhfkitError(f"{args.file}: {len(found.problems)} of {found.records} records are invalid "
                           f"(first: {found.problems[0]})")
    if not found.produced:  # the training readers refuse a source that gives no record
        raise RlhfkitError(f"{args.file}: no {found.kind} records: every record holds no preference")
    return 0
