"""`rlhfkit data check FILE`: each public shape is recognised and counted, problems are listed with file:line past
the first one, and the exit status says whether every record is valid.

The files are written here in each set's published shape (Anthropic HH-RLHF, TRL's conversational format,
UltraFeedback binarized, SHP as parquet through --columns, OpenAssistant trees and message tables); every
expected line is written out by hand.
"""

from __future__ import annotations

import json

import pytest

from rlhfkit import cli
from rlhfkit.data.check import record_shape


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    """Run in tmp_path, so the reports name files as short relative paths."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(name: str, records: list) -> str:
    """A JSONL file of `records`; a str item is written as the line itself (a malformed line)."""
    with open(name, "w", encoding="utf-8") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    return name


def check(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    """(exit status, stdout lines, stderr lines) of `rlhfkit data check ARGV`."""
    rc = cli.main(["data", "check", *argv])
    captured = capsys.readouterr()
    return rc, captured.out.splitlines(), captured.err.splitlines()


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# --------------------------------------------------------------------------------------------------- shapes
def test_hh_rlhf_full_texts_are_read_at_their_last_assistant_marker(capsys):
    turn = "\n\nHuman: the movie was\n\nAssistant:"
    history = "\n\nHuman: a film\n\nAssistant: about what?\n\nHuman: love\n\nAssistant:"
    write("hh.jsonl", [{"chosen": turn + " great fun", "rejected": turn + " boring"},
                       {"chosen": history + " a love story", "rejected": history + " no idea"},
                       {"chosen": turn + " fun", "rejected": turn + " dull"}])
    rc, out, err = check(capsys, "hh.jsonl")
    assert (rc, err) == (0, [])
    assert out == [
        "source:   hh.jsonl",
        "kind:     preferences (told by the first record's fields; --format to choose)",
        "shapes:",
        "  3  implicit prompt, full texts (marker '\\n\\nAssistant:')",
        "fields:   chosen (3), rejected (3)",
        "records:  3 valid, 0 invalid, of 3",
        "gives:    3 preferences records",
        "prompts:  2 distinct; 0 of 3 records (0%) have a conversation prompt",
    ]


def test_trl_conversational_shapes_are_told_apart(capsys):
    question = [msg("user", "the movie was")]
    chatml = "<|im_start|>user\nthe movie was<|im_end|>\n<|im_start|>assistant\n"
    write("trl.jsonl", [
        {"prompt": question, "chosen": [msg("assistant", "great fun")], "rejected": [msg("assistant", "boring")]},
        # one assistant message given as an object, not a one-item list
        {"prompt": [msg("user", "a film")], "chosen": msg("assistant", "love"), "rejected": msg("assistant", "war")},
        {"chosen": question + [msg("assistant", "fun")], "rejected": question + [msg("assistant", "dull")]},
        {"chosen": chatml + "fun<|im_end|>\n", "rejected": chatml + "dull<|im_end|>\n"},
        {"prompt": "the movie was", "chosen": " great fun", "rejected": " boring"},
    ])
    rc, out, err = check(capsys, "trl.jsonl")
    assert (rc, err) == (0, [])
    assert out[2:] == [
        "shapes:",
        "  2  conversational (prompt + assistant messages, TRL)",
        "  1  implicit prompt, conversations",
        "  1  implicit prompt, full texts (chat template marker '<|im_start|>assistant\\n')",
        "  1  strings",
        "fields:   prompt (3), chosen (5), rejected (5)",
        "records:  5 valid, 0 invalid, of 5",
        "gives:    5 preferences records",
        # lines 1 and 3 share one conversation; the string "the movie was" is another prompt
        "prompts:  4 distinct; 3 of 5 records (60%) have a conversation prompt",
    ]


def test_ultrafeedback_full_conversations_with_scores_and_a_history_that_differs(capsys):
    def record(question: str, history: str) -> dict:
        return {"prompt": question, "prompt_id": "p1",
                "chosen": [msg("user", history), msg("assistant", "great fun")],
                "rejected": [msg("user", history), msg("assistant", "boring")],
                "messages": [msg("user", history), msg("assistant", "great fun")],
                "score_chosen": 8.0, "score_rejected": 3.5}

    write("uf.jsonl", [record("the movie was", "the movie was"), record("the movie was", "a film about")])
    rc, out, err = check(capsys, "uf.jsonl")
    assert rc == 1
    assert out[2:6] == [
        "shapes:",
        "  2  full conversations (history repeats the prompt, UltraFeedback), scored (score_chosen/score_rejected)"
        "  (1 invalid)",
        "fields:   prompt (2), prompt_id (2), chosen (2), rejected (2), messages (2), score_chosen (2), "
        "score_rejected (2)",
        "records:  1 valid, 1 invalid, of 2",
    ]
    first = "uf.jsonl:2: field 'chosen': the conversation before the assistant reply differs from 'prompt'"
    assert out[-2:] == ["problems (first 1 of 1):", "  " + first]
    assert err == [f"rlhfkit: error: uf.jsonl: 1 of 2 records are invalid (first: {first})"]


SHP_COLUMNS = "prompt=history,responses=human_ref_A+human_ref_B,scores=score_A+score_B"


def test_shp_parquet_through_columns_reads_scores_as_rankings_and_says_what_ties_give(capsys):
    import datasets

    rows = [{"history": q, "human_ref_A": "great fun", "human_ref_B": "boring", "score_A": a, "score_B": b}
            for q, a, b in (("the movie was", 10, 3), ("a film about", 2, 7), ("i loved the", 4, 4))]
    datasets.Dataset.from_list(rows).to_parquet("shp.parquet")
    rc, out, err = check(capsys, "shp.parquet", "--columns", SHP_COLUMNS)
    assert rc == 0 and not [line for line in err if line.startswith("rlhfkit")]
    assert out == [
        "source:   shp.parquet",
        "kind:     rankings (told by the first record's fields; --format to choose)",
        "shapes:",
        "  3  scores -> ranking",
        "fields:   history (3), human_ref_A (3), human_ref_B (3), score_A (3), score_B (3), prompt (3), "
        "responses (3), scores (3)",
        "records:  3 valid, 0 invalid, of 3",
        "gives:    2 rankings records; 1 record with no preference (every score equal, or no ranked replies): "
        "none from them",
        "prompts:  2 distinct; 0 of 2 records (0%) have a conversation prompt",
    ]


def test_a_missing_mapped_column_is_a_problem_of_its_row(capsys):
    write("cols.jsonl", [{"history": "the movie was", "human_ref_A": "fun", "human_ref_B": "dull", "score_A": 2,
                          "score_B": 1},
                         {"history": "a film", "human_ref_A": "fun", "score_A": 2, "score_B": 1}])
    rc, out, err = check(capsys, "cols.jsonl", "--columns", SHP_COLUMNS)
    assert rc == 1
    assert "records:  1 valid, 1 invalid, of 2" in out
    assert out[-1].startswith("  cols.jsonl:2: the column mapping sends 'responses' to missing column 'human_ref_B'")


def oasst_tree() -> dict:
    """An OpenAssistant tree: a prompter turn with two ranked replies, the best one followed by a second prompter
    turn with two ranked replies of its own: two rankings."""
    def node(mid: str, role: str, text: str, rank: int | None = None, replies: list | None = None) -> dict:
        return {"message_id": mid, "text": text, "role": role, "rank": rank, "replies": replies or []}

    follow_up = node("q2", "prompter", "why?", replies=[node("c", "assistant", "the acting", 1),
                                                        node("d", "assistant", "the plot", 0)])
    return {"message_tree_id": "t1",
            "prompt": node("q1", "prompter", "the movie was", replies=[node("a", "assistant", "great fun", 0,
                                                                            [follow_up]),
                                                                       node("b", "assistant", "boring", 1)])}


def test_an_openassistant_tree_gives_a_ranking_per_ranked_reply_set(capsys):
    write("oasst.jsonl", [oasst_tree()])
    rc, out, err = check(capsys, "oasst.jsonl")
    assert (rc, err) == (0, [])
    assert out[1:] == [
        "kind:     rankings (told by the first record's fields; --format to choose)",
        "shapes:",
        "  1  OpenAssistant tree",
        "fields:   message_tree_id (1), prompt (1)",
        "records:  1 valid, 0 invalid, of 1",
        "gives:    2 rankings records",
        "prompts:  2 distinct; 2 of 2 records (100%) have a conversation prompt",
    ]


def test_an_openassistant_message_table_is_gathered_into_trees(capsys):
    def row(mid: str, parent: str | None, role: str, text: str, rank: int | None = None) -> dict:
        return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank}

    write("oasst-table.jsonl", [row("q1", None, "prompter", "the movie was"),
                                row("a", "q1", "assistant", "great fun", 0),
                                row("b", "q1", "assistant", "boring", 1),
                                row("x", "elsewhere", "assistant", "a reply to a message not here", 0),
                                {"text": "not a message"}])
    rc, out, err = check(capsys, "oasst-table.jsonl")
    assert rc == 1
    assert out[2:] == [
        "shapes:",
        "  1  OpenAssistant message table",
        "table:    4 message rows in 1 tree; 1 reply to a message not in the table: left out",
        "fields:   message_id (4), parent_id (4), role (4), text (5), rank (4)",
        "records:  1 valid, 1 invalid, of 2",
        "gives:    1 rankings record",
        "prompts:  1 distinct; 1 of 1 records (100%) have a conversation prompt",
        "problems (first 1 of 1):",
        "  oasst-table.jsonl:5: expected a message row (message_id, parent_id, role, text) like the rows before",
    ]
    assert len(err) == 1 and err[0].startswith("rlhfkit: error: oasst-table.jsonl: 1 of 2 records are invalid")


@pytest.mark.parametrize("kind,raw,shape", [
    ("sft", {"prompt": "the movie was", "response": " fun"}, "pair"),
    ("sft", {"prompt": [msg("user", "the movie was")], "response": msg("assistant", "fun")}, "conversational prompt"),
    ("sft", {"messages": [msg("user", "hi"), msg("assistant", "hello")]}, "messages"),
    ("candidates", {"prompt": "the movie was", "responses": [" fun", " dull"]}, "strings"),
    ("candidates", {"prompt": "the movie was", "responses": [msg("assistant", "fun"), " dull"]}, "conversational"),
    ("prompts", {"prompt": [msg("user", "hi")]}, "conversation"),
    ("prompts", {"prompt": "hi"}, "string"),
    ("corpus", {"text": "the movie was fun"}, "text"),
    ("rankings", {"prompt": "hi", "responses": ["a", "b"], "ranking": [1, 0], "scores": [0.1, 0.9]}, "ranking"),
    ("preferences", {"chosen": "a", "rejected": "b", "score_chosen": 2},
     "implicit prompt, full texts (no shared assistant marker), scored (score_chosen/score_rejected)"),
    ("preferences", ["not", "an", "object"], "not a JSON object"),
])
def test_record_shape(kind, raw, shape):
    assert record_shape(raw, kind) == shape


# -------------------------------------------------------------------------------------------------- problems
def preference_file_with_problems() -> str:
    good = {"prompt": "the movie was", "chosen": " great fun", "rejected": " boring"}
    return write("p.jsonl", [good,
                             {**good, "chosen": 3},
                             '{"prompt": "x", "chosen": ',  # a bad JSON line in the middle
                             good,
                             {**good, "rejected": " great fun"},
                             "",  # blank lines are skipped, and keep the numbering
                             {"prompt": "a film", "chosen": " fun"}])


def test_problems_are_listed_with_file_and_line_past_the_first_one(capsys):
    rc, out, err = check(capsys, preference_file_with_problems())
    assert rc == 1
    assert out[3:] == [
        "  5  strings  (3 invalid)",
        "fields:   prompt (5), chosen (5), rejected (4)",
        "records:  2 valid, 4 invalid, of 6",
        "gives:    2 preferences records",
        "prompts:  1 distinct; 0 of 2 records (0%) have a conversation prompt",
        "problems (first 4 of 4):",
        "  p.jsonl:2: field 'chosen': expected a string or an assistant message, got int",
        "  p.jsonl:3: not valid JSON (Expecting value at column 27); the line ends inside a record: JSON Lines "
        "needs each record on one line",
        "  p.jsonl:5: field 'rejected': chosen and rejected are identical: the pair carries no preference",
        "  p.jsonl:7: field 'rejected': missing (expected a string or an assistant message)",
    ]
    assert err == ["rlhfkit: error: p.jsonl: 4 of 6 records are invalid (first: p.jsonl:2: field 'chosen': expected "
                   "a string or an assistant message, got int)"]


@pytest.mark.parametrize("show,listed", [("2", ["p.jsonl:2:", "p.jsonl:3:"]), ("0", [])])
def test_show_limits_the_problems_listed(show, listed, capsys):
    rc, out, err = check(capsys, preference_file_with_problems(), "--show", show)
    problems = [line.split()[0] for line in out if line.startswith("  p.jsonl:")]
    assert (rc, problems) == (1, listed)
    assert ("problems (first 2 of 4):" in out) == bool(listed)
    assert len(err) == 1 and "4 of 6 records are invalid" in err[0]


def test_a_negative_show_is_refused(capsys):
    write("ok.jsonl", [{"prompt": "the movie was"}])
    rc, out, err = check(capsys, "ok.jsonl", "--show", "-1")
    assert (rc, out, err) == (1, [], ["rlhfkit: error: --show must be >= 0, got -1"])


def test_format_reads_the_file_as_another_kind(capsys):
    write("prefs.jsonl", [{"prompt": "the movie was", "chosen": " great fun", "rejected": " boring"}])
    rc, out, err = check(capsys, "prefs.jsonl", "--format", "sft")
    assert rc == 1
    assert out[1:4] == ["kind:     sft (--format)", "shapes:", "  1  pair  (1 invalid)"]
    assert err == ["rlhfkit: error: prefs.jsonl: 1 of 1 records are invalid (first: prefs.jsonl:1: field 'response': "
                   "missing (expected a string))"]


def test_a_first_record_of_no_kind_names_its_fields_for_columns(capsys):
    write("qa.jsonl", [{"question": "the movie was", "answer": " great fun"}])
    rc, out, err = check(capsys, "qa.jsonl")
    assert (rc, out) == (1, [])
    assert err == ["rlhfkit: error: qa.jsonl:1: a record of no known kind (its fields: question, answer): map fields "
                   "with --columns prompt=COLUMN,... (docs/formats.md) or pass --format"]
    rc, out, err = check(capsys, "qa.jsonl", "--columns", "prompt=question,response=answer")
    assert (rc, err) == (0, [])
    assert out[1:4] == ["kind:     sft (told by the first record's fields; --format to choose)", "shapes:", "  1  pair"]


def test_records_whose_scores_all_tie_give_nothing_to_train_on(capsys):
    write("ties.jsonl", [{"prompt": "the movie was", "responses": [" fun", " dull"], "scores": [1, 1]}])
    rc, out, err = check(capsys, "ties.jsonl")
    assert rc == 1
    assert "records:  1 valid, 0 invalid, of 1" in out
    assert err == ["rlhfkit: error: ties.jsonl: no rankings records: every record holds no preference"]


def test_a_file_of_unreadable_lines_has_no_kind(capsys):
    write("junk.jsonl", ["{", "not json"])
    rc, out, err = check(capsys, "junk.jsonl")
    assert rc == 1
    assert out[:3] == ["source:   junk.jsonl", "kind:     unknown (no record could be read)",
                       "records:  0 valid, 2 invalid, of 2"]
    assert len(err) == 1 and err[0].startswith("rlhfkit: error: junk.jsonl: 2 of 2 records are invalid (first: "
                                               "junk.jsonl:1: not valid JSON")


@pytest.mark.parametrize("body,message", [
    (b"", "f.jsonl: no records found"),
    (b'{"prompt": "the movie was"}\n{"prompt": "caf\xe9"}\n', "f.jsonl:2: not valid UTF-8"),  # after a good line
])
def test_a_file_that_cannot_be_read_fails_at_once_with_no_report(body, message, capsys, here):
    (here / "f.jsonl").write_bytes(body)
    rc, out, err = check(capsys, "f.jsonl")
    assert (rc, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"rlhfkit: error: {message}")
