"""Conversations and public shapes in records, unit by unit, with literal expectations: implicit prompts
(HH-RLHF, ChatML), the preference shapes, `--data.columns`, rankings by score, OpenAssistant trees and message
tables, pairs and reward-model scores from rankings, held-out keys, record kinds, the other record kinds with
conversation prompts, a gold scorer given a conversation, and a reply sampled after a conversation prompt, stored
as text and encoded again."""

from __future__ import annotations

import pytest

from rlhfkit.data import detect_kind, ranking_to_pairs, read_records, split_key, validate, write_jsonl
from rlhfkit.data.chat import implicit_prompt, plain_prompt
from rlhfkit.data.convert import (map_columns, parse_columns, rows_to_trees, scored_to_ranking, scores_ranking,
                                  tree_rankings)
from rlhfkit.data.records import normalize
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.reward.groups import ranked_responses

AT = ("data.jsonl", 7)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------ implicit prompts
def test_hh_prompt_ends_at_the_last_assistant_marker_and_shared_first_words_stay_in_the_reply():
    chosen = "\n\nHuman: Is it good?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: I think the acting is."
    rejected = "\n\nHuman: Is it good?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: I think not."
    assert implicit_prompt(chosen, rejected, AT) == (
        "\n\nHuman: Is it good?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant:", " I think the acting is.",
        " I think not.")


def test_hh_texts_that_part_before_their_last_assistant_turn_share_no_prompt():
    chosen = "\n\nHuman: Is it good?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: The acting."
    rejected = "\n\nHuman: Is it good?\n\nAssistant: No.\n\nHuman: Why?\n\nAssistant: The plot."
    with pytest.raises(DataError, match=r"data.jsonl:7: field 'chosen': chosen and rejected differ before their "
                                        r"last '\\n\\nAssistant:'"):
        implicit_prompt(chosen, rejected, AT)
    with pytest.raises(DataError, match="field 'prompt': no prompt"):
        implicit_prompt("\n\nHuman: Hi\n\nAssistant: a", "\n\nHuman: Ho\n\nAssistant: b", AT)
    with pytest.raises(DataError, match="field 'rejected': the reply after the shared prompt is empty"):
        implicit_prompt("\n\nHuman: Hi\n\nAssistant: a", "\n\nHuman: Hi\n\nAssistant: ", AT)


def test_chatml_prompt_keeps_the_header_and_the_reply_keeps_its_end_of_turn_token():
    head = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert implicit_prompt(head + "yes<|im_end|>\n", head + "yeah<|im_end|>\n", AT) == (
        head, "yes<|im_end|>", "yeah<|im_end|>")


# ---------------------------------------------------------------------------------------- preference shapes
def test_string_records_come_back_unchanged():
    rec = {"prompt": "the movie was", "chosen": " great", "rejected": " bad", "label": {"source": "human"}}
    assert validate(rec, "preferences", AT) == rec


def test_trl_conversational_pair():
    rec = {"prompt": [{"role": "system", "content": "be kind"}, user("hi")], "chosen": [assistant("hello")],
           "rejected": assistant("go away")}  # a single message may be an object
    assert validate(rec, "preferences", AT) == {
        "prompt": [{"role": "system", "content": "be kind"}, user("hi")], "chosen": "hello", "rejected": "go away"}


def test_ultrafeedback_pair_is_the_conversation_its_sides_hold():
    rec = {"prompt": "hi", "prompt_id": "x1", "chosen": [user("hi"), assistant("hello")],
           "rejected": [user("hi"), assistant("go away")], "score_chosen": 8.0, "score_rejected": 3.5}
    assert validate(rec, "preferences", AT) == {**rec, "prompt": [user("hi")], "chosen": "hello",
                                                "rejected": "go away"}
    with pytest.raises(DataError, match="data.jsonl:7: field 'chosen': the conversation before the assistant reply "
                                        "differs from 'prompt'"):
        validate({**rec, "chosen": [user("hello?"), assistant("hello")]}, "preferences", AT)


def test_implicit_conversations_share_their_history_as_the_prompt():
    history = [user("hi"), assistant("hello"), user("why?")]
    rec = {"chosen": [*history, assistant("because")], "rejected": [*history, assistant("no reason")]}
    assert validate(rec, "preferences", AT) == {"prompt": history, "chosen": "because", "rejected": "no reason"}


# ----------------------------------------------------------------------------------------------- columns
def test_parse_columns():
    assert parse_columns("prompt=history, responses = human_ref_A+human_ref_B,scores=score_A+score_B") == {
        "prompt": ["history"], "responses": ["human_ref_A", "human_ref_B"], "scores": ["score_A", "score_B"]}
    assert parse_columns({"prompt": "q", "responses": ["a", "b"]}) == {"prompt": ["q"], "responses": ["a", "b"]}
    assert parse_columns("") == {} and parse_columns(None) == {}
    for bad in ("prompt", "prompt=", "=question", "responses=a+", "prompt=q,,chosen=a"):
        with pytest.raises(RlhfkitError, match="column mapping: cannot read"):
            parse_columns(bad)
    with pytest.raises(RlhfkitError, match="column mapping: field 'prompt' is mapped twice"):
        parse_columns("prompt=a,prompt=b")


def test_map_columns_gathers_lists_keeps_the_source_columns_and_names_a_missing_one():
    row = {"history": "q", "A": "a", "B": "b"}
    assert map_columns(row, parse_columns("prompt=history,responses=A+B"), AT) == {
        "history": "q", "A": "a", "B": "b", "prompt": "q", "responses": ["a", "b"]}
    with pytest.raises(DataError, match="data.jsonl:7: the column mapping sends 'responses' to missing column 'C' "
                                        "\\(the record has 'history', 'A', 'B'\\)"):
        map_columns(row, parse_columns("responses=A+C"), AT)


# ------------------------------------------------------------------------------------------------ scores
def test_scores_ranking_best_first_with_ties():
    assert scores_ranking([0.1, 0.9, 0.1]) == [1, [0, 2]]
    assert scores_ranking([3, 7, 5, 7]) == [[1, 3], 2, 0]
    assert scores_ranking([2.0, 2.0]) == [[0, 1]]


def test_scored_records_read_as_rankings_keeping_their_scores():
    rec = {"prompt": "q", "responses": ["a", "b", "c"], "scores": [1, 9, 1]}
    assert normalize(rec, "rankings", AT) == [{**rec, "ranking": [1, [0, 2]]}]
    assert scored_to_ranking({**rec, "scores": [4, 4, 4]}, AT) is None  # no preference: skipped
    assert normalize({**rec, "scores": [4, 4, 4]}, "rankings", AT) == []
    for scores in ([1, 2], [1, 2, float("inf")], [True, False, True], [1, "2", 3], None):
        with pytest.raises(DataError, match="field 'scores': expected a list of 3 finite numbers"):
            normalize({**rec, "scores": scores}, "rankings", AT)


def test_ranking_to_pairs_carries_each_pairs_scores():
    rec = {"prompt": [user("q")], "responses": ["a", "b", "c"], "ranking": [1, [0, 2]], "scores": [1, 9, 1]}
    label = {"from_ranking": True}
    assert ranking_to_pairs(rec) == [
        {"prompt": [user("q")], "chosen": "b", "rejected": "a", "label": label, "score_chosen": 9,
         "score_rejected": 1},
        {"prompt": [user("q")], "chosen": "b", "rejected": "c", "label": label, "score_chosen": 9,
         "score_rejected": 1}]


def test_ranked_responses_gives_the_scores_for_the_margin():
    ranking = {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [1, [0, 2]], "scores": [1, 9, 2]}
    assert ranked_responses(ranking) == (["b", "a", "c"], [0, 1, 1], [9.0, 1.0, 2.0])
    likert = {"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0], "likert": [2, 6]}
    assert ranked_responses(likert) == (["b", "a"], [0, 1], [6.0, 2.0])
    pair = {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8, "score_rejected": 3.5}
    assert ranked_responses(pair) == (["a", "b"], [0, 1], [8.0, 3.5])
    assert ranked_responses({**pair, "score_rejected": None}) == (["a", "b"], [0, 1], None)  # both or none


# ------------------------------------------------------------------------------------------ OpenAssistant
def oa(mid: str, role: str, text: str, rank: int | None = None, replies: list | None = None, **extra) -> dict:
    return {"message_id": mid, "role": role, "text": text, **({"rank": rank} if rank is not None else {}),
            "replies": replies or [], **extra}


def test_tree_rankings_prompt_is_the_conversation_to_that_turn_skipping_deleted_and_unranked_replies():
    follow_up = oa("q2", "prompter", "More", replies=[oa("c", "assistant", "C", 1), oa("d", "assistant", "D", 0)])
    tree = {"message_tree_id": "t", "prompt": oa("q", "prompter", "Hi", replies=[
        oa("a", "assistant", "Hello", 1, [follow_up]),
        oa("b", "assistant", "Hey", 0),
        oa("x", "assistant", "deleted", 2, deleted=True),
        oa("y", "assistant", "unranked"),
        oa("z", "assistant", "spam", 3, review_result=False)])}
    label = {"source": "human", "dataset": "openassistant", "message_tree_id": "t"}
    assert tree_rankings(tree, AT) == [
        {"prompt": [user("Hi")], "responses": ["Hey", "Hello"], "ranking": [0, 1],
         "label": {**label, "message_id": "q"}},
        {"prompt": [user("Hi"), assistant("Hello"), user("More")], "responses": ["D", "C"], "ranking": [0, 1],
         "label": {**label, "message_id": "q2"}}]


def test_rows_to_trees_reads_an_out_of_order_message_table():
    rows = [{"message_id": "b", "parent_id": "q", "role": "assistant", "text": "B", "rank": 1},
            {"message_id": "q", "parent_id": None, "role": "prompter", "text": "Q"},
            {"message_id": "q9", "parent_id": None, "role": "prompter", "text": "Q9"},
            {"message_id": "a", "parent_id": "q", "role": "assistant", "text": "A", "rank": 0},
            {"message_id": "o", "parent_id": "gone", "role": "assistant", "text": "orphan", "rank": 0}]
    trees = list(rows_to_trees((row, ("t.jsonl", n)) for n, row in enumerate(rows, start=1)))
    assert [(t["message_tree_id"], where) for t, where in trees] == [("q", ("t.jsonl", 2)), ("q9", ("t.jsonl", 3))]
    assert [[r["message_id"] for r in t["prompt"]["replies"]] for t, _ in trees] == [["b", "a"], []]
    assert [r for t, where in trees for r in tree_rankings(t, where)] == [
        {"prompt": [user("Q")], "responses": ["A", "B"], "ranking": [0, 1],
         "label": {"source": "human", "dataset": "openassistant", "message_tree_id": "q", "message_id": "q"}}]


def test_a_message_table_file_reads_as_rankings(tmp_path):
    rows = [{"message_id": "a", "parent_id": "q", "role": "assistant", "text": "A", "rank": 0, "lang": "en"},
            {"message_id": "q", "parent_id": None, "role": "prompter", "text": "Q", "lang": "en"},
            {"message_id": "b", "parent_id": "q", "role": "assistant", "text": "B", "rank": 1, "lang": "en"}]
    write_jsonl(tmp_path / "oasst.jsonl", rows)
    assert detect_kind(tmp_path / "oasst.jsonl", ("preferences", "rankings")) == "rankings"
    assert [(r["prompt"], r["responses"]) for r in read_records(tmp_path / "oasst.jsonl", "rankings")] == [
        ([user("Q")], ["A", "B"])]


def test_a_bad_tree_is_one_data_error_not_a_crash():
    def tree(replies):
        return {"prompt": {"message_id": "q", "text": "Q", "role": "prompter", "replies": replies}}

    with pytest.raises(DataError, match="data.jsonl:7: field 'prompt': message a: rank must be a number, got 'x'"):
        tree_rankings(tree([{"message_id": "a", "role": "assistant", "text": "A", "rank": "x"},
                            {"message_id": "b", "role": "assistant", "text": "B", "rank": 1}]), AT)
    with pytest.raises(DataError, match="data.jsonl:7: field 'prompt': message q: replies must be a list"):
        tree_rankings(tree(5), AT)


def test_a_repeated_message_id_is_refused_at_its_row_instead_of_looping():
    rows = [{"message_id": "1", "parent_id": None, "role": "prompter", "text": "q"},
            {"message_id": "2", "parent_id": "1", "role": "assistant", "text": "a", "rank": 0},
            {"message_id": "1", "parent_id": "2", "role": "prompter", "text": "again"}]
    with pytest.raises(DataError, match="t.jsonl:3: field 'message_id': repeats message '1' of an earlier row"):
        list(rows_to_trees((row, ("t.jsonl", n)) for n, row in enumerate(rows, start=1)))


def test_gzipped_jsonl_is_read_and_a_gzip_under_another_name_is_named(tmp_path):
    import gzip

    line = b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: Hello!", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: Go."}\n'
    (tmp_path / "hh.jsonl.gz").write_bytes(gzip.compress(line * 2))
    assert [r["chosen"] for r in read_records(tmp_path / "hh.jsonl.gz", "preferences")] == [" Hello!", " Hello!"]
    (tmp_path / "hh.jsonl").write_bytes(gzip.compress(line))
    with pytest.raises(DataError, match="hh.jsonl: is gzip-compressed: name it"):
        read_records(tmp_path / "hh.jsonl", "preferences")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(line * 50)[:30])
    with pytest.raises(DataError, match="cut.jsonl.gz: not a readable gzip file"):
        read_records(tmp_path / "cut.jsonl.gz", "preferences")


def test_an_unterminated_string_is_reported_with_one_at(tmp_path):
    (tmp_path / "u.jsonl").write_text('{"prompt": "open\n')
    with pytest.raises(DataError) as err:
        read_records(tmp_path / "u.jsonl", "prompts")
    assert "(Unterminated string starting at column 12)" in str(err.value)


# ----------------------------------------------------------------------------------- splits and record kinds
def test_split_key_of_a_conversation_prompt_is_its_first_user_turn():
    first = {"prompt": [{"role": "system", "content": "be kind"}, user("hi"), assistant("hello"), user("why?")],
             "chosen": "a", "rejected": "b"}
    assert split_key(first) == "hi"
    assert split_key({"prompt": [user("hi")], "responses": ["a"]}) == "hi"  # a branch of the same conversation
    assert split_key([user("hi")]) == "hi"  # online DPO's list of prompts


def test_detect_kind_of_parquet_files_with_and_without_columns(tmp_path):
    import datasets

    pairs = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]).to_parquet(str(pairs))
    assert detect_kind(pairs, ("preferences", "rankings")) == "preferences"
    shp = tmp_path / "shp.parquet"
    datasets.Dataset.from_list([{"history": "q", "human_ref_A": "a", "human_ref_B": "b", "score_A": 3,
                                 "score_B": 1}]).to_parquet(str(shp))
    columns = "prompt=history,responses=human_ref_A+human_ref_B,scores=score_A+score_B"
    assert detect_kind(shp, ("preferences", "rankings"), columns=columns) == "rankings"
    assert detect_kind(shp, ("candidates",), columns=columns) == "candidates"
    with pytest.raises(DataError, match=f"{shp}:1: expected preferences or rankings records"):
        detect_kind(shp, ("preferences", "rankings"))  # SHP's own columns name no rlhfkit field
    assert read_records(shp, "rankings", columns) == [
        {"history": "q", "human_ref_A": "a", "human_ref_B": "b", "score_A": 3, "score_B": 1, "prompt": "q",
         "responses": ["a", "b"], "scores": [3, 1], "ranking": [0, 1]}]


def test_prompts_candidates_and_sft_records_take_conversation_prompts():
    convo = [{"role": "system", "content": "be kind"}, user("hi")]
    assert validate({"prompt": convo}, "prompts", AT) == {"prompt": convo}
    assert validate({"prompt": convo, "responses": [assistant("hello"), "", "hey"]}, "candidates", AT) == {
        "prompt": convo, "responses": ["hello", "", "hey"]}
    assert validate({"prompt": convo, "response": [assistant("hello")]}, "sft", AT) == {
        "prompt": convo, "response": "hello"}
    with pytest.raises(DataError, match="data.jsonl:7: field 'prompt': a conversation prompt must end with a user "
                                        "turn, not assistant"):
        validate({"prompt": [*convo, assistant("hello")]}, "prompts", AT)
    with pytest.raises(DataError, match="field 'responses\\[1\\]': expected one assistant turn, got a conversation"):
        validate({"prompt": convo, "responses": ["a", [user("x"), assistant("y")]]}, "candidates", AT)


def test_vader_scores_a_conversation_as_its_plain_text():
    from rlhfkit.labeling.gold import vader_score

    convo = [{"role": "system", "content": "be kind"}, user("i hated the movie")]
    assert plain_prompt(convo) == "System: be kind\nUser: i hated the movie"
    # "kind" in the system turn is positive: the whole conversation is scored, not only its last turn
    assert vader_score([convo, "i hated the movie"], ["great", "great"]) == [0.5106, -0.0258]


# ------------------------------------------------------------------------------------------------ sampling
def word_model(tokenizer, arch):
    """A tiny random model that can only say whole words (" the", " movie", ...) or stop: its output head gets a
    bias of -1e4 on every other token. Text sampled from it re-tokenises to the sampled tokens, which random
    byte-level BPE tokens in general do not (broken UTF-8, merges the tokenizer would not make)."""
    import torch
    from toy import WORDS

    from rlhfkit.models import build_tiny

    model = build_tiny(tokenizer, arch, seed=0)
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS]
    allowed = [i[0] for i in ids if len(i) == 1] + [tokenizer.eos_token_id]
    assert len(allowed) > 5  # a few words to choose from
    head = torch.nn.Linear(arch.hidden_size, len(tokenizer), bias=True)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.fill_(-1e4)
        head.bias[allowed] = 0.0
    model.lm_head = head
    return model


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_a_sampled_reply_stored_as_a_response_encodes_to_the_sampled_tokens(chat, tiny_tokenizer, tiny_arch):
    from rlhfkit.data import encode_pair, encode_prompt
    from rlhfkit.generation import decode_responses, sample

    if chat:
        from transformers import AutoTokenizer

        from rlhfkit.models import smollm2_dir

        tok = AutoTokenizer.from_pretrained(smollm2_dir())
    else:
        tok = tiny_tokenizer
    prompt = [{"role": "system", "content": "be kind"}, user("the movie was")]
    prompt_ids = encode_prompt(tok, prompt)
    rollout = sample(word_model(tok, tiny_arch), [prompt_ids], tok.pad_token_id, tok.eos_token_id,
                     num_samples=8, min_new_tokens=1, max_new_tokens=5, seed=0)
    texts = decode_responses(tok, rollout)
    ended = 0
    for ids, mask, text in zip(rollout.response_ids, rollout.response_mask, texts):
        sampled = ids[mask.bool()].tolist()
        ended += sampled[-1] == tok.eos_token_id
        reply = sampled if sampled[-1] == tok.eos_token_id else sampled + [tok.eos_token_id]  # EOS is trained
        enc = encode_pair(tok, prompt, text, max_length=128, max_prompt_length=96)
        assert text.startswith(" ") and enc.input_ids == prompt_ids + reply, text
        assert enc.loss_mask == [0] * len(prompt_ids) + [1] * len(reply)
    assert 0 < ended < len(texts)  # both kinds were checked: replies that stopped and replies cut at 5 tokens
    if not chat:
        # what is not kept: a reply sampled right after the plain "Assistant:" with no space before it is
        # stored as text like a written reply, and gets the space a written reply is given
        assert tok.decode(encode_pair(tok, prompt, "great", 128, 96).input_ids).endswith("Assistant: great"
                                                                                          "<|endoftext|>")


def test_invalid_records_are_skipped_and_counted_with_data_invalid_skip(tmp_path, capsys):
    from rlhfkit.config import DataConfig
    from rlhfkit.data import read_data

    hh = '{"chosen": "\\n\\nHuman: %s\\n\\nAssistant: %s", "rejected": "\\n\\nHuman: %s\\n\\nAssistant: %s"}'
    lines = [hh % ("a", "yes", "a", "no"), hh % ("b", "same", "b", "same"), "{not json", hh % ("c", "x", "c", "y")]
    (tmp_path / "hh.jsonl").write_text("\n".join(lines) + "\n")
    data = DataConfig(train=str(tmp_path / "hh.jsonl"))
    with pytest.raises(DataError, match="hh.jsonl:2: field 'rejected': chosen and rejected are identical"):
        read_data(data, data.train, "preferences")
    skip = DataConfig(train=data.train, invalid="skip")
    assert [r["prompt"] for r in read_data(skip, skip.train, "preferences")] == [
        "\n\nHuman: a\n\nAssistant:", "\n\nHuman: c\n\nAssistant:"]
    said = capsys.readouterr().err
    assert "hh.jsonl: 2 invalid records skipped (--data.invalid skip); the first: " in said
    assert "hh.jsonl:2: field 'rejected': chosen and rejected are identical" in said
    (tmp_path / "bad.jsonl").write_text(lines[1] + "\n")
    with pytest.raises(DataError, match="bad.jsonl: no preferences records found"):
        read_data(skip, str(tmp_path / "bad.jsonl"), "preferences")
