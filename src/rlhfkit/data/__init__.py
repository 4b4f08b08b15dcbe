"""Data: the record file formats, tokenisation, collation into typed batches, and held-out splits.

File formats (docs/formats.md): corpus, sft, prompts, candidates, preferences, rankings — JSON Lines, UTF-8. A
parquet file or a Hugging Face `datasets` name is accepted wherever a JSONL path is. Every reader validates each
record and raises DataError naming `file:line` and the field.

    records.py   validate, read (`iter_records`, `located_records`, `read_records`), `write_jsonl`, `ranking_to_pairs`, `detect_kind`
    encode.py    tokenisation into `Encoded` (token ids + loss mask) under the truncation policy
    collate.py   `TokenBatch`, `collate`: Encoded examples padded into (B, T)
    packing.py   `PrefixBatch`, `pack_groups`: a group's sequences in one row, their shared prefix laid out once
    split.py     seeded held-out splits by prompt (`split_train_eval`, `load_train_eval`)

Records are plain dicts (the JSON itself) once validated: they round-trip through `write_jsonl` unchanged. The
names other modules use are re-exported here.
"""

from __future__ import annotations

from rlhfkit.data.collate import TokenBatch, collate
from rlhfkit.data.encode import (Encoded, TruncationStats, encode_messages, encode_pair, encode_prompt,
                                 encode_sft_records)
from rlhfkit.data.records import (
    detect_kind,
    iter_records,
    located_records,
    ranking_to_pairs,
    read_records,
    validate,
    write_jsonl,
)
from rlhfkit.data.split import load_train_eval, split_key, split_summary, split_train_eval, warn_shared_prompts

__all__ = [
    "Encoded",
    "TokenBatch",
    "TruncationStats",
    "collate",
    "detect_kind",
    "encode_messages",
    "encode_pair",
    "encode_prompt",
    "encode_sft_records",
    "iter_records",
    "located_records",
    "load_train_eval",
    "ranking_to_pairs",
    "read_records",
    "split_key",
    "split_summary",
    "split_train_eval",
    "validate",
    "warn_shared_prompts",
    "write_jsonl",
]
