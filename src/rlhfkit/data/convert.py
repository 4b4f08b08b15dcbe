"""Public preference sets read as they are: column mapping, score-based responses and OpenAssistant trees.

    columns        `--data.columns prompt=question,chosen=answer_good` renames a table's columns to rlhfkit's
                   fields; `responses=human_ref_A+human_ref_B` gathers several columns into one list (SHP)
    scores         {"prompt", "responses": [...], "scores": [...]} read as rankings: higher score first, equal
                   scores tied, the scores kept for the reward model's margin (SHP, UltraFeedback)
    trees          OpenAssistant conversation trees, one tree per record ({"prompt": {"text", "role": "prompter",
                   "replies": [...]}}), or the flat message table (`message_id`, `parent_id`, `role`, `rank`,
                   `text` per row, e.g. the `OpenAssistant/oasst1` dataset): every prompter turn with two or more
                   ranked assistant replies is one ranking, its prompt the conversation up to that turn
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rlhfkit.data.chat import Where
from rlhfkit.errors import DataError, RlhfkitError

Columns = dict[str, list[str]]


# ------------------------------------------------------------------------------------------------ columns
def parse_columns(spec: str | Mapping[str, Any] | None) -> Columns:
    """`field=column,field=column+column` -> {field: [column, ...]}; empty or None -> {}."""
    if not spec:
        return {}
    if isinstance(spec, Mapping):
        return {k: [v] if isinstance(v, str) else list(v) for k, v in spec.items()}
    out: Columns = {}
    for item in spec.split(","):
        field, sep, columns = (part.strip() for part in item.partition("="))
        names = [c.strip() for c in columns.split("+")]
        if not sep or not field or not all(names):
            raise RlhfkitError(f"column mapping: cannot read {item.strip()!r}: expected field=column (or "
                               "field=column+column for a list), e.g. prompt=question,chosen=good,rejected=bad")
        if field in out:
            raise RlhfkitError(f"column mapping: field {field!r} is mapped twice")
        out[field] = names
    return out


def map_columns(row: Any, columns: Columns, where: Where) -> Any:
    """The row with each mapped field set from its column(s); the source columns stay too. A missing column
    names the columns the row has."""
    if not columns or not isinstance(row, dict):
        return row
    out = dict(row)
    for field, names in columns.items():
        missing = [n for n in names if n not in row]
        if missing:
            raise DataError(*where, f"the column mapping sends {field!r} to missing column {missing[0]!r} (the record "
                            f"has {', '.join(map(repr, row)) or 'no columns'})")
        out[field] = row[names[0]] if len(names) == 1 else [row[n] for n in names]
    return out


# ------------------------------------------------------------------------------------------------- scores
def is_finite_number(value: Any) -> bool:
    """An int or float that is finite; a boolean is not a score, though Python counts it as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite_numbers(value: Any, n: int, where: Where, field: str) -> list[float]:
    """n finite numbers (not booleans)."""
    if not isinstance(value, list) or len(value) != n or not all(map(is_finite_number, value)):
        raise DataError(*where, f"expected a list of {n} finite numbers, one per response", field)
    return value


def scores_ranking(scores: list[float]) -> list[int | list[int]]:
    """Response indices best first by score; equal scores form a tie. [0.1, 0.9, 0.1] -> [1, [0, 2]]."""
    levels = sorted(set(scores), reverse=True)
    tiers = [[i for i, s in enumerate(scores) if s == level] for level in levels]
    return [tier[0] if len(tier) == 1 else tier for tier in tiers]


def scored_to_ranking(rec: dict, where: Where) -> dict | None:
    """A {"prompt", "responses", "scores"} record as a ranking by score (None when every score is equal: no
    preference). The responses are checked by the rankings reader after this."""
    responses = rec.get("responses")
    if not isinstance(responses, list):
        raise DataError(*where, "expected a list of responses", "responses")
    scores = finite_numbers(rec.get("scores"), len(responses), where, "scores")
    ranking = scores_ranking(scores)
    return {**rec, "ranking": ranking} if len(ranking) > 1 else None


# -------------------------------------------------------------------------------------------------- trees
def is_tree(rec: Any) -> bool:
    """An OpenAssistant conversation tree: {"prompt": {"text", "role", "replies"}, ...}."""
    return isinstance(rec, dict) and isinstance(rec.get("prompt"), dict) and "replies" in rec["prompt"]


def is_message_row(rec: Any) -> bool:
    """A row of OpenAssistant's flat message table."""
    return isinstance(rec, dict) and {"message_id", "parent_id", "role", "text"} <= rec.keys()


_ROLE = {"prompter": "user", "assistant": "assistant"}


def _node_text(node: Any, where: Where) -> tuple[str, str]:
    if not isinstance(node, dict) or node.get("role") not in _ROLE:
        raise DataError(*where, "a message of the tree has no role 'prompter' or 'assistant'", "prompt")
    text = node.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(*where, f"message {node.get('message_id', '?')}: text must be a non-empty string", "prompt")
    return _ROLE[node["role"]], text


def _live(node: dict) -> bool:
    return not node.get("deleted") and node.get("review_result") is not False


def _replies(node: dict, where: Where) -> list[dict]:
    """A message's live replies; `replies` must be a list (or absent)."""
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise DataError(*where, f"message {node.get('message_id', '?')}: replies must be a list", "prompt")
    return [r for r in replies if isinstance(r, dict) and _live(r)]


def _rank(node: dict, where: Where) -> int | float:
    rank = node["rank"]
    if not is_finite_number(rank):
        raise DataError(*where, f"message {node.get('message_id', '?')}: rank must be a number, got {rank!r}",
                        "prompt")
    return rank


def tree_rankings(tree: dict, where: Where) -> list[dict]:
    """Every ranking in one conversation tree: a prompter turn's live assistant replies with a rank (0 = best),
    two or more of them; the prompt is the conversation from the root to that turn."""
    out: list[dict] = []
    stack: list[tuple[dict, list[dict]]] = [(tree["prompt"], [])]
    while stack:
        node, history = stack.pop()
        role, text = _node_text(node, where)
        conversation = history + [{"role": role, "content": text}]
        replies = _replies(node, where)
        ranked = sorted((r for r in replies if r.get("rank") is not None and role == "user"),
                        key=lambda r: _rank(r, where))
        if len(ranked) >= 2:
            out.append({"prompt": conversation, "responses": [_node_text(r, where)[1] for r in ranked],
                        "ranking": scores_ranking([-float(r["rank"]) for r in ranked]),
                        "label": {"source": "human", "dataset": "openassistant",
                                  **({"message_tree_id": tree["message_tree_id"]} if "message_tree_id" in tree else {}),
                                  "message_id": node.get("message_id")}})
        stack += [(r, conversation) for r in reversed(replies)]
    return out


def rows_to_trees(rows: Iterable[tuple[Any, Where]]) -> Iterator[tuple[dict, Where]]:
    """OpenAssistant's flat message table as trees, in the order of their roots; each tree is located at its root
    row. Replies whose parent is not in the table are left out. A repeated `message_id` is refused: its replies
    would be shared by two messages, and a reply could become its own ancestor."""
    seen: set = set()
    roots: list[tuple[dict, Where]] = []
    children: dict[Any, list[dict]] = {}
    for row, where in rows:
        if not is_message_row(row):
            raise DataError(*where, "expected a message row (message_id, parent_id, role, text) like the rows before")
        for field in ("message_id", "parent_id"):
            if not isinstance(row[field], (str, int)) and not (field == "parent_id" and row[field] is None):
                raise DataError(*where, f"expected a string or an integer, got {type(row[field]).__name__}", field)
        if row["message_id"] in seen:
            raise DataError(*where, f"repeats message {row['message_id']!r} of an earlier row", "message_id")
        seen.add(row["message_id"])
        node = {**row, "replies": children.setdefault(row["message_id"], [])}
        if row["parent_id"] is None:
            roots.append((node, where))
        else:
            children.setdefault(row["parent_id"], []).append(node)
    for root, where in roots:
        yield {"prompt": root, "message_tree_id": root.get("message_tree_id", root["message_id"])}, where
