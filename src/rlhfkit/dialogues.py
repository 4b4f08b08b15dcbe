"""Mine multi-turn dialogues from raw text with the heuristic used for Gopher (Rae et al. 2021, the dialogue
prompt data): a run of >= 6 consecutive paragraphs whose prefixes end in a separator (`Name:`,
`Dr Smith -`, `Q.`), where all even paragraphs share one prefix and all odd paragraphs another, different one.

Paragraphs: every non-empty line is a paragraph (blank lines are separators too, so both one-turn-per-line
transcripts and blank-line-separated ones work; a turn wrapped over several lines is not joined).

Prefixes: tried in this order on each paragraph, so "Dr. Smith: hi" is the speaker "Dr. Smith", not "Dr":
    `Name:`      up to 4 words, then a colon
    `Name -`     up to 4 words, then a space and a dash (-, – or —)
    `Q.`         one word of at most 15 letters/digits, then a full stop
The separator is part of the speaker's identity ("Q." and "Q:" are different prefixes).

Runs are maximal: a run ends at the first paragraph that breaks the alternation, and the next run may begin
at the paragraph before it (A B A B A C A C A C: the second run starts at the last A of the first), so a
shared turn can appear in two dialogues. Each run becomes `{"messages": [...]}` with the first speaker as
user and the second as assistant, prefixes stripped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data import check_output, read_records, read_text, write_jsonl
from rlhfkit.errors import DataError

MAX_NAME_WORDS = 4
_PREFIXES = (
    (re.compile(r"^(?P<name>[^:]{1,40}?)\s*:\s+(?P<body>\S.*)$"), ":"),
    (re.compile(r"^(?P<name>.{1,40}?)\s+[-\u2013\u2014]\s+(?P<body>\S.*)$"), "-"),
    (re.compile(r"^(?P<name>\w{1,15})\.\s+(?P<body>\S.*)$"), "."),
)


def split_prefix(paragraph: str) -> tuple[str, str, str] | None:
    """(speaker name, separator, utterance) if the paragraph starts with a speaker prefix, else None."""
    for pattern, separator in _PREFIXES:
        match = pattern.match(paragraph.strip())
        if match and len(match["name"].split()) <= MAX_NAME_WORDS:
            return match["name"].strip(), separator, match["body"].strip()
    return None


def paragraphs(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _continues(prefixes: list, start: int, k: int) -> bool:
    """Can paragraph k extend the run that starts at `start`? It needs a prefix, a different one from the
    paragraph before it, and (from the third turn on) the same one as the paragraph two before."""
    if prefixes[k] is None:
        return False
    if k == start:
        return True
    if prefixes[k] == prefixes[k - 1]:
        return False
    return k - start < 2 or prefixes[k] == prefixes[k - 2]


def mine_dialogues(text: str, min_turns: int = 6) -> list[list[tuple[str, str]]]:
    """Every maximal strictly alternating two-speaker run of >= min_turns paragraphs, as (speaker, utterance)."""
    parsed = [split_prefix(p) for p in paragraphs(text)]
    prefixes = [None if p is None else p[:2] for p in parsed]
    runs, start = [], 0
    for k in range(len(parsed) + 1):
        if k < len(parsed) and _continues(prefixes, start, k):
            continue
        if k - start >= min_turns:  # the run [start, k) just ended
            runs.append([(parsed[i][0], parsed[i][2]) for i in range(start, k)])
        if k == len(parsed):
            break
        if k > start and prefixes[k] is not None and prefixes[k] != prefixes[k - 1]:
            start = k - 1  # paragraphs k-1, k alternate: they open the next run
        else:
            start = k if prefixes[k] is not None else k + 1
    return runs


def dialogue_record(turns: list[tuple[str, str]]) -> dict:
    """{"messages": [...]}: the first speaker is the user, the second the assistant."""
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": u} for i, (_, u) in enumerate(turns)]}


def read_texts(path: Path) -> list[str]:
    """A .txt file is one text; anything else is read as a corpus ({"text"}) JSONL/parquet/dataset. An empty
    input is an error (there is nothing to search), naming the file."""
    if path.suffix == ".txt":
        text = read_text(path)
        if not text.strip():
            raise DataError(str(path), None, "is empty: no text to search for dialogues")
        return [text]
    return [rec["text"] for rec in read_records(path, "corpus")]


@dataclass(frozen=True)
class MineArgs:
    input: Path
    """A plain .txt file or a corpus JSONL ({"text"} per line) to search for dialogues."""
    out: Path
    """JSONL file of {"messages": [...]} SFT records, one per dialogue found."""
    min_turns: int = 6
    """Shortest run of alternating paragraphs kept as a dialogue (Gopher uses 6)."""


def main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(MineArgs, argv, prog="rlhfkit data mine-dialogues")
    check_output(args.out)
    texts = read_texts(args.input)
    dialogues = [d for text in texts for d in mine_dialogues(text, args.min_turns)]
    write_jsonl(args.out, (dialogue_record(d) for d in dialogues))
    counts = {"texts": len(texts), "dialogues": len(dialogues), "turns": sum(len(d) for d in dialogues)}
    print(json.dumps(counts))
    return 0
