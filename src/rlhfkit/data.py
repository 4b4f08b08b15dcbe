"""Records, readers and validators for every file format, tokenisation, and collation into typed batches.

File formats (DESIGN.md): corpus, sft, prompts, candidates, preferences, rankings — JSON Lines, UTF-8. A
parquet file or a Hugging Face `datasets` name is accepted wherever a JSONL path is. Every reader validates each
record and raises DataError naming `file:line` and the field.

Records are plain dicts (the JSON itself) once validated: they round-trip through `write_jsonl` unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError
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


def _validate_ranking(rec: dict, where: tuple[str, int | None]) -> None:
    _text(rec, "prompt", where, allow_empty=True)
    responses = _text_list(rec, "responses", where, min_len=2)
    ranking = _int_list(rec, "ranking", where)
    if sorted(ranking) != list(range(len(responses))):
        raise DataError(*where, f"must be a permutation of 0..{len(responses) - 1}, got {ranking}", "ranking")
    if "likert" in rec and rec["likert"] is not None:
        likert = _int_list(rec, "likert", where)
        if len(likert) != len(responses) or not all(1 <= s <= 7 for s in likert):
            raise DataError(*where, "needs one score in 1..7 per response", "likert")


# ------------------------------------------------------------------------------------------------- reading
def _iter_jsonl(path: Path) -> Iterator[tuple[Any, tuple[str, int]]]:
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), (str(path), lineno)
            except json.JSONDecodeError as err:
                raise DataError(str(path), lineno, f"not valid JSON ({err.msg} at column {err.colno})") from None


def _iter_table(source: str) -> Iterator[tuple[Any, tuple[str, int]]]:
    """Rows of a parquet file or a `datasets` name (optionally `name:split`), numbered from 1."""
    import datasets  # heavy: imported only for these sources

    if source.endswith(".parquet"):
        table = datasets.Dataset.from_parquet(source)
    else:
        name, _, split = source.partition(":")
        try:
            table = datasets.load_dataset(name, split=split or "train")
        except Exception as err:  # datasets raises many types; the user needs the message, not the type
            raise DataError(source, None, f"could not load as a datasets name: {err}") from None
    for i, row in enumerate(table, start=1):
        yield row, (source, i)


def iter_records(source: str | os.PathLike, kind: str) -> Iterator[dict]:
    """Yield validated records of `kind` from a JSONL path, a parquet path or a `datasets` name."""
    source = str(source)
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.exists():
            raise DataError(source, None, "file not found")
        rows = _iter_table(source) if path.suffix == ".parquet" else _iter_jsonl(path)
    elif source.endswith(".parquet"):
        raise DataError(source, None, "file not found")
    else:
        rows = _iter_table(source)
    for rec, where in rows:
        yield validate(rec, kind, where)


def read_records(source: str | os.PathLike, kind: str) -> list[dict]:
    """All validated records of `kind`; an empty source is an error (nothing to train on)."""
    records = list(iter_records(source, kind))
    if not records:
        raise DataError(str(source), None, f"no {kind} records found")
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as JSON Lines atomically (temp file + rename); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def ranking_to_pairs(rec: dict) -> list[dict]:
    """Expand a ranking of K responses into its C(K, 2) preference records (best-first order)."""
    ordered = [rec["responses"][i] for i in rec["ranking"]]
    label = dict(rec.get("label") or {}, from_ranking=True)
    return [
        {"prompt": rec["prompt"], "chosen": ordered[i], "rejected": ordered[j], "label": label}
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
        if ordered[i] != ordered[j]
    ]


# -------------------------------------------------------------------------------------------- tokenisation
# Prompt and response are tokenised separately and concatenated, so no BPE merge can cross the boundary and
# the prompt/response split is exact. EOS is appended once (never when the response was cut short: the model
# must not learn to stop where the text did not). Masks are built from lengths, never from token ids, so
# pad == eos cannot hide the real EOS from the loss.

from dataclasses import dataclass, field  # noqa: E402


@dataclass
class Encoded:
    """One tokenised example. input_ids and loss_mask have equal length; loss_mask is 1 on trained tokens."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def prompt_length(self) -> int:
        """Tokens before the first trained token."""
        return self.loss_mask.index(1) if 1 in self.loss_mask else len(self.loss_mask)


@dataclass
class TruncationStats:
    """What the truncation policy did; reported by every stage that tokenises."""

    seen: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_response: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def summary(self) -> str:
        return (
            f"{self.seen} records: {self.truncated} truncated, {self.dropped_too_long} dropped as too long, "
            f"{self.dropped_no_response} dropped with no response tokens left"
        )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _bos_prefix(tokenizer: Any, first_ids: list[int]) -> list[int]:
    """[bos] if this tokenizer adds a BOS by itself and the text does not already start with it."""
    bos = tokenizer.bos_token_id
    if bos is None or (first_ids and first_ids[0] == bos):
        return []
    adds_bos = tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    return [bos] if adds_bos else []


def _segments_to_example(
    segments: list[tuple[list[int], int]], max_length: int, max_prompt_length: int, policy: str, stats: TruncationStats
) -> Encoded | None:
    """Join (ids, trained) segments. Over-long: cut the untrained prefix from the left, then the end."""
    stats.seen += 1
    ids = [t for seg, _ in segments for t in seg]
    mask = [m for seg, m in segments for _ in seg]
    if 1 not in mask:
        return _no_response(stats)
    if len(ids) <= max_length and mask.index(1) <= max_prompt_length:
        return Encoded(ids, mask)
    if policy == "drop":
        stats.dropped_too_long += 1
        return None
    stats.truncated += 1
    start = mask.index(1) if 1 in mask else len(mask)
    cut = max(0, start - max_prompt_length)  # keep the end of the prompt, nearest the response
    ids, mask = ids[cut:], mask[cut:]
    ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(ids, mask) if 1 in mask else _no_response(stats)


def _no_response(stats: TruncationStats) -> None:
    stats.dropped_no_response += 1
    return None


def encode_pair(
    tokenizer: Any,
    prompt: str,
    response: str,
    max_length: int,
    max_prompt_length: int,
    policy: str = "truncate",
    stats: TruncationStats | None = None,
    chat: bool | None = None,
) -> Encoded | None:
    """Tokenise (prompt, response) -> Encoded, or None when the policy drops it.

    chat=None uses the tokenizer's chat template when it has one (prompt as a user turn with the generation
    prompt); otherwise the plain template: prompt text immediately followed by response text (a continuation).
    """
    stats = stats if stats is not None else TruncationStats()
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    response_ids = _ids(tokenizer, response)
    eos = tokenizer.eos_token_id
    if not response_ids or response_ids[-1] != eos:
        response_ids.append(eos)
    return _segments_to_example([(prompt_ids, 0), (response_ids, 1)], max_length, max_prompt_length, policy, stats)


def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Prompt token ids exactly as training sees them: chat-templated when the tokenizer has a template
    (chat=None), BOS first when the tokenizer uses one, never twice."""
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    prompt_text = render_chat(tokenizer, [{"role": "user", "content": prompt}], True) if chat else prompt
    prompt_ids = _ids(tokenizer, prompt_text)
    return _bos_prefix(tokenizer, prompt_ids) + prompt_ids


def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template as text (never tokenised here, so BOS is handled in one place)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _message_segments(tokenizer: Any, messages: list[dict]) -> list[tuple[str, int]]:
    """Split a conversation into (text, trained) segments; assistant contents (and their end) are trained.

    With a chat template: the text each assistant turn adds to the rendered conversation is trained, the rest
    (including the generation prompt that precedes it) is context. Without one, the documented plain template:
    `User: ...\\n` context lines, `Assistant:` as context, ` content` + EOS trained, then `\\n`.
    """
    if not getattr(tokenizer, "chat_template", None):
        segs: list[tuple[str, int]] = []
        for m in messages:
            if m["role"] == "assistant":
                segs += [("Assistant:", 0), (" " + m["content"] + tokenizer.eos_token, 1), ("\n", 0)]
            else:
                segs.append((f"{PLAIN_ROLES[m['role']]}: {m['content']}\n", 0))
        return segs
    segs, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        after = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("chat template is not prefix-stable; cannot isolate assistant turns")
        segs += [(before[len(done) :], 0), (after[len(before) :], 1)]
        done = after
    return segs


def encode_messages(
    tokenizer: Any,
    messages: list[dict],
    max_length: int,
    max_prompt_length: int,
    policy: str = "truncate",
    stats: TruncationStats | None = None,
) -> Encoded | None:
    """Tokenise a multi-turn conversation; only assistant turns are trained. Segments are tokenised apart."""
    stats = stats if stats is not None else TruncationStats()
    segments = [(_ids(tokenizer, text), trained) for text, trained in _message_segments(tokenizer, messages)]
    segments = [(ids, t) for ids, t in segments if ids]
    if segments:
        segments[0] = (_bos_prefix(tokenizer, segments[0][0]) + segments[0][0], segments[0][1])
    return _segments_to_example(segments, max_length, max_prompt_length, policy, stats)


def encode_sft_records(tokenizer: Any, records: list[dict], cfg: Any) -> tuple[list[Encoded], TruncationStats]:
    """Encode sft records (pairs or messages) under a DataConfig's length policy."""
    stats = TruncationStats()
    out = []
    for rec in records:
        if "messages" in rec:
            enc = encode_messages(tokenizer, rec["messages"], cfg.max_length, cfg.max_prompt_length, cfg.truncation, stats)
        else:
            enc = encode_pair(
                tokenizer, rec["prompt"], rec["response"], cfg.max_length, cfg.max_prompt_length, cfg.truncation, stats
            )
        if enc is not None:
            out.append(enc)
    return out, stats


# ----------------------------------------------------------------------------------------------- collation
import torch  # noqa: E402


@dataclass
class TokenBatch:
    """A padded batch. Shapes: input_ids, attention_mask, loss_mask all (B, T).

    attention_mask is 1 on real tokens (prompt and response), loss_mask is 1 only on trained tokens; padding is
    0 in both. With right padding the sequences start at column 0.
    """

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-example tensors, e.g. ref log-probs (B,)

    def to(self, device: Any) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(examples: list[Encoded], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad a list of Encoded into a TokenBatch (B, T) with T = the longest example."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[b, cols] = torch.tensor(e.input_ids)
        attention_mask[b, cols] = 1
        loss_mask[b, cols] = torch.tensor(e.loss_mask)
    return TokenBatch(input_ids, attention_mask, loss_mask)


# ------------------------------------------------------------------------------------------ held-out splits
# A held-out set is cut by prompt, not by record. Preference data holds many records per prompt (all C(K, 2)
# pairs of K completions, or several rankings); split by record, nearly every held-out completion would also
# sit in some training pair and held-out accuracy would be measured on trained text.


def split_key(rec: Any) -> str | None:
    """The prompt a record is held out with: records with equal keys always land on the same side.

    A bare string (online DPO's prompt list) is its own key; a record with a "prompt" (preferences, rankings,
    sft pairs, prompts, candidates) is keyed by it; an sft conversation ("messages") by its first user turn,
    because branches of one conversation share that turn and the assistant turns after it, which are trained
    in every branch. Anything else (a corpus {"text"}) gives None: a group of its own. Prompts compare by exact
    string, with no whitespace or case normalisation ("the film" and "the film " are different prompts).
    """
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        return None
    if isinstance(rec.get("prompt"), str):
        return rec["prompt"]
    for message in rec.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    return None


def _group_ids(records: list) -> tuple[list[int], list[Any]]:
    """(group index of each record, one key per group in order of first appearance); keyless records get a
    group of their own, keyed by their position."""
    index: dict[Any, int] = {}
    group_of = []
    for i, rec in enumerate(records):
        key = split_key(rec)
        group_of.append(index.setdefault(("record", i) if key is None else ("prompt", key), len(index)))
    return group_of, list(index)


def _seeded_rank(key: Any, seed: int) -> str:
    """A group's place in the seeded hold-out order: a hash of (seed, key), so a prompt's side depends on the
    prompt and the seed only, not on where its records sit in the file."""
    return hashlib.sha256(json.dumps([seed, key], ensure_ascii=False).encode()).hexdigest()


def split_train_eval(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded, deterministic hold-out split by prompt: (train, eval), each in input order.

    Records are grouped by `split_key` (their prompt; corpus records alone) and whole groups are held out, so
    no prompt is on both sides. The held-out share is counted in groups: round(eval_fraction * groups),
    at least one held out and one kept when there are two or more groups. With a single prompt nothing can be
    held out without training on it, so nothing is (and a warning says so).
    """
    group_of, keys = _group_ids(records)
    if eval_fraction <= 0 or len(records) < 2:
        return list(records), []
    if len(keys) < 2:
        say(f"warning: all {len(records)} records share one prompt: nothing is held out (a held-out set is cut "
            "by prompt)")
        return list(records), []
    order = sorted(range(len(keys)), key=lambda g: _seeded_rank(keys[g], seed))
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * eval_fraction)))
    held = set(order[:n_eval])
    return ([r for r, g in zip(records, group_of) if g not in held],
            [r for r, g in zip(records, group_of) if g in held])


def split_summary(train: list, held: list) -> dict[str, int]:
    """Distinct prompts on each side and on both (`shared_prompts`; 0 for a split made here); corpus records
    have no prompt and are not counted."""
    train_keys = {k for k in map(split_key, train) if k is not None}
    held_keys = {k for k in map(split_key, held) if k is not None}
    return {"train_prompts": len(train_keys), "eval_prompts": len(held_keys),
            "shared_prompts": len(train_keys & held_keys)}


def warn_shared_prompts(train: list, held: list, train_source: str, eval_source: str) -> int:
    """Say (one line) how many of a separate eval file's prompts also occur in the training data, whose
    held-out metrics are then partly on trained prompts; returns that count."""
    summary = split_summary(train, held)
    if summary["shared_prompts"]:
        say(f"warning: {summary['shared_prompts']} of the {summary['eval_prompts']} prompts in {eval_source} also "
            f"occur in {train_source}: held-out metrics are partly on trained prompts")
    return summary["shared_prompts"]


def load_train_eval(cfg: Any, kind: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Records for a DataConfig: its `eval` source (with a warning when its prompts overlap train's), or a
    seeded `eval_fraction` hold-out of `train` split by prompt (`split_train_eval`)."""
    if not cfg.train:
        raise DataError("--data.train", None, "no training data given")
    train = read_records(cfg.train, kind)[: cfg.max_records]
    if cfg.eval:
        held = read_records(cfg.eval, kind)
        warn_shared_prompts(train, held, cfg.train, cfg.eval)
        return train, held
    return split_train_eval(train, cfg.eval_fraction, seed)
