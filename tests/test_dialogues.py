"""Gopher-style dialogue mining on hand-written texts that must and must not be extracted."""

from __future__ import annotations

import json

from rlhfkit import dialogues
from rlhfkit.data import read_records


def _turns(speakers: str, sep: str = ":", n: int | None = None) -> str:
    """Paragraphs "<speaker><sep> line i" for each speaker letter, e.g. _turns("ABAB")."""
    names = {"A": "Alice", "B": "Bob", "C": "Carol"}
    return "\n".join(f"{names[s]}{sep} line {i}" for i, s in enumerate(speakers))


def test_five_paragraphs_are_not_a_dialogue():
    assert dialogues.mine_dialogues(_turns("ABABA")) == []


def test_six_paragraphs_are_a_dialogue_with_prefixes_stripped():
    (run,) = dialogues.mine_dialogues(_turns("ABABAB"))
    assert run == [("Alice" if i % 2 == 0 else "Bob", f"line {i}") for i in range(6)]


def test_three_speakers_are_not_a_dialogue():
    assert dialogues.mine_dialogues(_turns("ABCABC")) == []
    assert dialogues.mine_dialogues(_turns("ABABAC")) == []  # breaks at the 6th turn: only 5 alternate


def test_same_prefix_twice_in_a_row_breaks_the_run():
    assert dialogues.mine_dialogues(_turns("ABAABAB")) == []  # ABA | ABAB: neither part reaches 6


def test_separators_colon_dash_and_full_stop():
    colon = "\n".join(f"{s}: turn {i}" for i, s in enumerate(["Dr Smith", "Mr Jones"] * 3))
    dash = "\n".join(f"{s} - turn {i}" for i, s in enumerate(["Dr Smith", "Mr Jones"] * 3))
    dot = "\n\n".join(f"{s}. turn {i}" for i, s in enumerate("QAQAQA"))  # blank-line separated
    for text, first in ((colon, "Dr Smith"), (dash, "Dr Smith"), (dot, "Q")):
        (run,) = dialogues.mine_dialogues(text)
        assert len(run) == 6 and run[0] == (first, "turn 0") and run[5][1] == "turn 5", text


def test_colon_wins_over_full_stop_in_a_name():
    assert dialogues.split_prefix("Dr. Smith: how are you?") == ("Dr. Smith", ":", "how are you?")
    assert dialogues.split_prefix("Q. What is it?") == ("Q", ".", "What is it?")
    assert dialogues.split_prefix("This sentence has far too many words before it: no") is None
    assert dialogues.split_prefix("plain prose without a prefix") is None


def test_same_name_with_other_separator_is_another_prefix():
    text = "Q. a\nA. b\nQ. c\nA. d\nQ: e\nA. f"
    assert dialogues.mine_dialogues(text) == []


def test_long_run_embedded_in_prose():
    prose = "It was a dark night. The interview began late.\n\nNobody expected what came next."
    interview = "\n".join(f"{'Q' if i % 2 == 0 else 'A'}. answer {i}" for i in range(10))
    text = f"{prose}\n{interview}\nAfterwards everyone went home.\n{prose}"
    (run,) = dialogues.mine_dialogues(text)
    assert [u for _, u in run] == [f"answer {i}" for i in range(10)]


def test_a_new_run_starts_at_the_turn_before_the_break():
    # A B A B A B A | then A C A C A C: the 7th paragraph (index 6) opens the second run
    text = _turns("ABABABA") + "\n" + "\n".join(f"{s}: x{i}" for i, s in enumerate(["Carol", "Alice"] * 3))
    first, second = dialogues.mine_dialogues(text)
    assert len(first) == 7 and len(second) == 7
    assert second[0] == ("Alice", "line 6") and second[1] == ("Carol", "x0")


def test_min_turns_option():
    assert len(dialogues.mine_dialogues(_turns("ABAB"), min_turns=4)) == 1


def test_cli_on_txt_and_corpus_jsonl(tmp_path, capsys):
    txt = tmp_path / "raw.txt"
    txt.write_text(_turns("ABABAB") + "\nprose\n" + _turns("ABABABAB"), encoding="utf-8")
    out = tmp_path / "dialogues.jsonl"
    assert dialogues.main(["--input", str(txt), "--out", str(out)]) == 0
    records = read_records(out, "sft")
    assert [len(r["messages"]) for r in records] == [6, 8]
    assert [m["role"] for m in records[0]["messages"][:2]] == ["user", "assistant"]
    assert json.loads(capsys.readouterr().out) == {"texts": 1, "dialogues": 2, "turns": 14}

    corpus = tmp_path / "corpus.jsonl"
    texts = (_turns("ABABAB"), "no dialogue here")
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    assert dialogues.main(["--input", str(corpus), "--out", str(out)]) == 0
    assert len(read_records(out, "sft")) == 1
