"""JSON Lines reading and writing details: the written file's mode, the column of a syntax error, a byte-order
mark at the start of a file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rlhfkit.data import detect_kind, read_records, write_jsonl
from rlhfkit.errors import DataError


# ------------------------------------------------------------------------------------------------ file mode
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.jsonl", "w") as f:
            f.write("{}\n")
        write_jsonl(tmp_path / "new.jsonl", [{"text": "a"}])
        write_jsonl(tmp_path / "plain.jsonl", [{"text": "b"}])  # replacing a file: the new file's mode
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "plain.jsonl").stat().st_mode) == expected
    assert read_records(tmp_path / "plain.jsonl", "corpus") == [{"text": "b"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl", "plain.jsonl"]  # no temporary left


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"text": "old"}])

    def records():
        yield {"text": "new"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "d.jsonl", records())
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]
    assert read_records(tmp_path / "d.jsonl", "corpus") == [{"text": "old"}]


# ------------------------------------------------------------------------------------------- syntax errors
def _error(tmp_path, text: str) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(DataError) as err:
        read_records(path, "sft")
    return str(err.value)


def test_a_record_split_over_two_lines_reports_the_end_of_its_first_line(tmp_path):
    # line 2 is `{"prompt": "a",` (15 characters): the parser wants a key at column 16, where the line ends
    message = _error(tmp_path, '{"prompt": "p", "response": " r"}\n{"prompt": "a",\n "response": " b"}\n')
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:2: not valid JSON (")
    assert "at column 16" in message
    assert "JSON Lines needs each record on one line" in message


def test_windows_line_endings_do_not_move_the_column(tmp_path):
    message = _error(tmp_path, '{"prompt": "a",\r\n "response": " b"}\r\n')
    assert ":1: not valid JSON (" in message and "at column 16" in message and "one line" in message


def test_an_error_inside_a_line_gets_its_column_and_no_hint(tmp_path):
    # `{"prompt": "a" "response": " b"}`: the comma is missing before column 16
    message = _error(tmp_path, '{"prompt": "a" "response": " b"}\n')
    assert ":1: not valid JSON (Expecting ',' delimiter at column 16)" in message
    assert "one line" not in message


# ----------------------------------------------------------------------------------------- byte-order mark
def test_a_byte_order_mark_at_the_start_is_read_away(tmp_path):
    path = tmp_path / "bom.jsonl"
    recs = [{"prompt": "p", "chosen": " é good", "rejected": " bad"},
            {"prompt": "q", "chosen": " a", "rejected": " b"}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in recs).encode())
    assert read_records(path, "preferences") == recs
    assert detect_kind(path, ("preferences", "rankings")) == "preferences"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}).encode())
    assert detect_kind(path, ("preferences", "rankings")) == "rankings"


def test_a_byte_order_mark_before_blank_lines_is_read_away(tmp_path):
    path = tmp_path / "bom.jsonl"
    rec = {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}
    path.write_bytes(b"\xef\xbb\xbf\n\n" + json.dumps(rec).encode() + b"\n")
    assert read_records(path, "rankings") == [rec]
    assert detect_kind(path, ("preferences", "rankings")) == "rankings"
