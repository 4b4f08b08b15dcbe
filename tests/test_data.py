import json

import pytest
import torch

from rlhfkit import cli
from rlhfkit.data import (
    TruncationStats,
    collate,
    encode_messages,
    encode_pair,
    encode_prompt,
    ranking_to_pairs,
    read_records,
    write_jsonl,
)
from rlhfkit.errors import DataError

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_prompt_and_response_are_tokenised_apart_and_eos_appended_once():
    from rlhfkit.models import gpt2_tokenizer

    tok = gpt2_tokenizer()  # the real GPT-2 BPE merges "great" into one token
    prompt, response = "the movie was gre", "at fun"
    enc = encode_pair(tok, prompt, response, max_length=64, max_prompt_length=64)
    p, r = ids(tok, prompt), ids(tok, response)
    assert enc.input_ids == [tok.bos_token_id] + p + r + [tok.eos_token_id]
    assert enc.loss_mask == [0] * (1 + len(p)) + [1] * (len(r) + 1)
    # joint tokenisation would merge across the boundary ("gre" + "at" -> "great"); ours never does
    assert ids(tok, prompt + response) != p + r
    # a response that already ends in EOS does not get a second one
    enc2 = encode_pair(tok, prompt, response + tok.eos_token, 64, 64)
    assert enc2.input_ids.count(tok.eos_token_id) == 1


def test_chat_template_applied_without_duplicating_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, **{k: getattr(tok, k) for k in
                         ("bos_token", "eos_token", "pad_token")})
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    prompt_ids = encode_prompt(tok, "hello")
    assert prompt_ids.count(tok.bos_token_id) == 1 and prompt_ids[0] == tok.bos_token_id
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "good film"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "bad plot"}]
    enc = encode_messages(tok, msgs, 128, 128)
    assert enc.input_ids.count(tok.bos_token_id) == 1
    trained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert trained == "good film<|im_end|>\nbad plot<|im_end|>\n"
    untrained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if not m])
    assert "be kind" in untrained and "hi" in untrained and "and?" in untrained


def test_plain_template_trains_only_assistant_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = [{"role": "user", "content": "the plot"}, {"role": "assistant", "content": "was fun"},
            {"role": "user", "content": "and"}, {"role": "assistant", "content": "bad"}]
    enc = encode_messages(tok, msgs, 128, 128)
    trained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m], skip_special_tokens=False)
    assert trained == f" was fun{tok.eos_token} bad{tok.eos_token}"


def test_truncation_policy_counts(tiny_tokenizer):
    tok = tiny_tokenizer
    stats = TruncationStats()
    long_prompt = " ".join(["the movie"] * 20)
    enc = encode_pair(tok, long_prompt, " great fun", max_length=30, max_prompt_length=6, stats=stats)
    assert len(enc.input_ids) <= 30 and enc.prompt_length == 6  # the prompt keeps its end
    assert enc.input_ids[6:] == ids(tok, " great fun") + [tok.eos_token_id]
    long_resp = encode_pair(tok, "a", " " + " ".join(["fun"] * 30), max_length=10, max_prompt_length=6, stats=stats)
    assert len(long_resp.input_ids) == 10 and long_resp.input_ids[-1] != tok.eos_token_id  # cut: no EOS
    dropped = encode_pair(tok, "a", " fun " * 30, 10, 6, policy="drop", stats=stats)
    assert dropped is None
    assert stats.as_dict() == {"seen": 3, "truncated": 2, "dropped_too_long": 1, "dropped_no_response": 0}
    # a conversation whose only assistant turn falls past max_length has no response tokens left
    msgs = [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]
    assert encode_messages(tok, msgs, 8, 64, stats=stats) is None
    assert stats.dropped_no_response == 1


def test_collate_masks_exclude_prompt_and_padding_even_when_pad_is_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    a = encode_pair(tok, "the movie", " was fun", 64, 64)
    b = encode_pair(tok, "a", " bad", 64, 64)
    eos = tok.eos_token_id
    for side in ("right", "left"):
        batch = collate([a, b], pad_id=eos, padding_side=side)  # pad == eos
        B, T = batch.input_ids.shape
        assert (B, T) == (2, len(a.input_ids))
        assert int(batch.loss_mask[1].sum()) == sum(b.loss_mask)  # padding (also eos) never counts
        # the real EOS of each row is trained
        for row, enc in zip(range(2), (a, b)):
            real = batch.attention_mask[row].bool()
            assert batch.input_ids[row][real].tolist() == enc.input_ids
            assert batch.loss_mask[row][real].tolist()[-1] == 1
        assert int((batch.loss_mask * (1 - batch.attention_mask)).sum()) == 0


def test_pad_equals_eos_still_learns_to_emit_eos(tiny_tokenizer, tiny_model):
    """With pad == eos the loss must still push up p(EOS) at the end of the response."""
    from rlhfkit.sft import lm_objective

    tok = tiny_tokenizer
    eos = tok.eos_token_id
    examples = [encode_pair(tok, "the movie", " was fun", 64, 64), encode_pair(tok, "a", " bad", 64, 64)]
    batch = collate(examples, pad_id=eos)
    logits_grad = {}

    def hook(module, inputs, output):
        output.logits.retain_grad()
        logits_grad["out"] = output.logits

    handle = tiny_model.register_forward_hook(hook)
    loss, _ = lm_objective(tiny_model, batch)
    loss.backward()
    handle.remove()
    grad = logits_grad["out"].grad  # (B, K, V): the LM head runs on the last K columns only (logits_to_keep)
    skipped = batch.input_ids.shape[1] - grad.shape[1]  # prompt columns that never reach the head
    last = len(examples[1].input_ids) - 1 - skipped  # kept column of row 1's real EOS
    assert grad[1, last - 1, eos] < 0  # descending the loss raises the EOS logit before the real EOS
    assert torch.all(grad[1, last:] == 0)  # nothing after it (padding) is trained


# ----------------------------------------------------------------------------------------------- bad input
def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "lines,where,needle",
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], ":2", "not valid JSON"),
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a"}'], ":2", "field 'response': missing"),
        (['{"prompt": "a", "response": "   "}'], ":1", "field 'response': is empty"),
        (['{"prompt": "a", "response": 3}'], ":1", "expected a string"),
        (['[1, 2]'], ":1", "expected a JSON object"),
    ],
)
def test_bad_sft_records_name_file_and_line(tmp_path, lines, where, needle):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_records(path, "sft")
    assert f"bad.jsonl{where}" in str(err.value) and needle in str(err.value)


def test_cli_reports_bad_input_as_one_line_without_traceback(tmp_path, capsys):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "x"}'])
    code = cli.main(["sft", "--data.train", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"{path}:2: field 'response': missing" in err
    assert not (tmp_path / "run").exists()  # nothing was started
    code = cli.main(["sft", "--data.train", str(tmp_path / "missing.jsonl")])
    assert code == 1 and "missing.jsonl: file not found" in capsys.readouterr().err


def test_rankings_and_preferences_validation(tmp_path):
    rank = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "likert": [3, 7, 1]}
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(rank), json.dumps(dict(rank, ranking=[0, 0, 1]))])
    with pytest.raises(DataError, match=r"r.jsonl:2: field 'ranking': must be a permutation"):
        read_records(path, "rankings")
    pairs = ranking_to_pairs(rank)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c", "a"), ("c", "b"), ("a", "b")]
    same = {"prompt": "p", "chosen": "x", "rejected": "x"}
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(same)])
    with pytest.raises(DataError, match="p.jsonl:1: field 'rejected': chosen and rejected are identical"):
        read_records(path, "preferences")
    bad_likert = dict(rank, likert=[0, 8, 1])
    with pytest.raises(DataError, match="likert"):
        read_records(write_lines(tmp_path / "l.jsonl", [json.dumps(bad_likert)]), "rankings")


def test_write_then_read_roundtrip_and_parquet(tmp_path):
    recs = [{"prompt": "a b", "response": " c"}, {"messages": [{"role": "user", "content": "u"},
                                                              {"role": "assistant", "content": "v"}]}]
    assert write_jsonl(tmp_path / "d.jsonl", recs) == 2
    assert read_records(tmp_path / "d.jsonl", "sft") == recs
    import datasets

    datasets.Dataset.from_list([{"text": "one"}, {"text": ""}]).to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(DataError, match=r"c.parquet:2: field 'text': is empty"):
        read_records(tmp_path / "c.parquet", "corpus")
    with pytest.raises(DataError, match="empty.jsonl: no corpus records"):
        read_records(write_lines(tmp_path / "empty.jsonl", [""]), "corpus")
