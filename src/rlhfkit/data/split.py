"""Held-out splits: records grouped by prompt (`split_key`) and whole groups held out, seeded and deterministic.

A held-out set is cut by prompt, not by record. Preference data holds many records per prompt (all C(K, 2)
pairs of K completions, or several rankings); split by record, nearly every held-out completion would also
sit in some training pair and held-out accuracy would be measured on trained text.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rlhfkit.data.records import read_records
from rlhfkit.errors import DataError
from rlhfkit.tracking import say


def split_key(rec: Any) -> str | None:
    """The prompt a record is held out with: records with equal keys always land on the same side.

    A bare string (online DPO's prompt list) is its own key, a bare list is a conversation prompt; a record with a
    string "prompt" (preferences, rankings, sft pairs, prompts, candidates) is keyed by it; a conversation (sft
    "messages", or a conversation prompt) by its first user turn, because branches of one conversation share that
    turn and the assistant turns after it, which are trained in every branch. Anything else (a corpus {"text"})
    gives None: a group of its own. Prompts compare by exact string, with no whitespace or case normalisation
    ("the film" and "the film " are different prompts).
    """
    if isinstance(rec, str):
        return rec
    if isinstance(rec, list):  # a conversation prompt of online DPO's list
        rec = {"prompt": rec}
    if not isinstance(rec, dict):
        return None
    if isinstance(rec.get("prompt"), str):
        return rec["prompt"]
    for message in rec.get("messages") or (rec.get("prompt") if isinstance(rec.get("prompt"), list) else []):
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


def read_data(cfg: Any, source: str, kind: str) -> list[dict]:
    """The records of `kind` in one of a DataConfig's sources, read with its column mapping and its policy for
    invalid records."""
    return read_records(source, kind, cfg.columns, skip_invalid=cfg.invalid == "skip")


def load_train_eval(cfg: Any, kind: str, seed: int) -> tuple[list[dict], list[dict]]:
    """Records for a DataConfig: its `eval` source (with a warning when its prompts overlap train's), or a
    seeded `eval_fraction` hold-out of `train` split by prompt (`split_train_eval`)."""
    if not cfg.train:
        raise DataError("--data.train", None, "no training data given")
    train = read_data(cfg, cfg.train, kind)[: cfg.max_records]
    if cfg.eval:
        held = read_data(cfg, cfg.eval, kind)
        warn_shared_prompts(train, held, cfg.train, cfg.eval)
        return train, held
    return split_train_eval(train, cfg.eval_fraction, seed)
