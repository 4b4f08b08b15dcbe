"""Data: the record file formats, tokenisation, collation into typed batches, and held-out splits.

File formats (docs/formats.md): corpus, sft, prompts, candidates, preferences, rankings — JSON Lines, UTF-8. A
parquet file or a Hugging Face `datasets` name is accepted wherever a JSONL path is. Every reader validates each
record and raises DataError naming `file:line` and the field.

    chat.py      conversations in records: a prompt is a string or a list of messages, a response the text of one
                 assistant turn; TRL's conversational shapes and implicit prompts (HH-RLHF) read into that form
    convert.py   public sets as they are: `--data.columns` mapping, score-based responses (SHP, UltraFeedback)
                 and OpenAssistant trees read as rankings
    files.py     where a data argument points (`resolve_source`: a local file, or a `datasets` name only when it
                 cannot be a path), `read_text` with file:line errors, `check_output`, atomic `write_text`
    records.py   validate and normalise, read (`raw_rows`, `iter_records`, `located_records`, `read_located`,
                 `read_records`), `write_jsonl`, `ranking_to_pairs`, `record_kind`, `detect_kind`
    encode.py    tokenisation into `Encoded` (token ids + loss mask) under the truncation policy
    collate.py   `TokenBatch`, `collate`: Encoded examples padded into (B, T)
    packing.py   `PrefixBatch`, `pack_groups`: a group's sequences in one row, their shared prefix laid out once
    split.py     seeded held-out splits by prompt (`split_train_eval`, `load_train_eval`)

Records are plain dicts (the JSON itself) once validated: they round-trip through `write_jsonl` unchanged. The
names other modules use are re-exported here.
"""

from __future__ import annotations

from rlhfkit.data.chat import Prompt, plain_prompt, prompt_key
from rlhfkit.data.collate import TokenBatch, collate
from rlhfkit.data.encode import (Encoded, TruncationStats, check_lengths, encode_messages, encode_pair,
                                 encode_prompt, encode_sft_records, prompt_text)
from rlhfkit.data.files import check_output, read_text, resolve_source, write_text
from rlhfkit.data.records import (
    detect_kind,
    iter_records,
    normalize,
    raw_rows,
    record_kind,
    located_records,
    ranking_to_pairs,
    read_located,
    read_records,
    validate,
    write_jsonl,
)
from rlhfkit.data.split import (load_train_eval, read_data, split_key, split_summary, split_train_eval,
                                warn_shared_prompts)

__all__ = [
    "Encoded",
    "Prompt",
    "TokenBatch",
    "TruncationStats",
    "check_lengths",
    "check_output",
    "collate",
    "detect_kind",
    "encode_messages",
    "encode_pair",
    "encode_prompt",
    "encode_sft_records",
    "iter_records",
    "located_records",
    "load_train_eval",
    "normalize",
    "plain_prompt",
    "prompt_key",
    "prompt_text",
    "raw_rows",
    "record_kind",
    "ranking_to_pairs",
    "read_data",
    "read_located",
    "read_records",
    "read_text",
    "resolve_source",
    "split_key",
    "split_summary",
    "split_train_eval",
    "validate",
    "warn_shared_prompts",
    "write_jsonl",
    "write_text",
]
