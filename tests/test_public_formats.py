"""Public preference sets as they are published: Anthropic HH-RLHF, UltraFeedback binarized, SHP (parquet, read
through --data.columns) and OpenAssistant conversation trees train `rlhfkit dpo` and `rlhfkit rm train` without a
conversion script; they encode to exactly the tokens and loss masks of the equivalent string records; and their
malformed variants fail with one line naming file:line.

The records are written here in each set's own shape (field names and nesting as published), small and offline.
"""

from __future__ import annotations

import json

import pytest
from test_bad_input import fails_cleanly

from rlhfkit import cli
from rlhfkit.data import write_jsonl

# --------------------------------------------------------------------------------------------------- shapes
QUESTIONS = ["the movie was", "a film about", "i loved the", "the acting is", "the plot was", "a story of"]


def hh_records() -> list[dict]:
    """Anthropic HH-RLHF: two full transcripts per record, no prompt; the last one is multi-turn."""
    recs = [{"chosen": f"\n\nHuman: {q}\n\nAssistant: great fun", "rejected": f"\n\nHuman: {q}\n\nAssistant: boring"}
            for q in QUESTIONS[:-1]]
    history = f"\n\nHuman: {QUESTIONS[-1]}\n\nAssistant: a good one\n\nHuman: why?\n\nAssistant:"
    recs.append({"chosen": history + " the acting", "rejected": history + " it was bad"})
    return recs


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def ultrafeedback_records() -> list[dict]:
    """UltraFeedback binarized: a string prompt repeated as the user turn of each side, scores, a prompt id."""
    return [{"prompt": q, "prompt_id": f"id{i}",
             "chosen": [msg("user", q), msg("assistant", "great fun")],
             "rejected": [msg("user", q), msg("assistant", "boring")],
             "messages": [msg("user", q), msg("assistant", "great fun")],
             "score_chosen": 8.0, "score_rejected": 3.5 + i % 2}
            for i, q in enumerate(QUESTIONS)]


def shp_rows() -> list[dict]:
    """SHP: a Reddit post (`history`), two comments, their scores and which was preferred (`labels`)."""
    return [{"post_id": f"p{i}", "domain": "movies_train", "upvote_ratio": 0.9, "history": q, "c_root_id_A": "a",
             "c_root_id_B": "b", "created_at_utc_A": 1, "created_at_utc_B": 2, "score_A": 10 + i, "score_B": 3,
             "human_ref_A": "great fun", "human_ref_B": "boring", "labels": 1, "seconds_difference": 1.0,
             "score_ratio": (10 + i) / 3}
            for i, q in enumerate(QUESTIONS)]


SHP_COLUMNS = "prompt=history,responses=human_ref_A+human_ref_B,scores=score_A+score_B"


def oasst_tree(i: int, question: str) -> dict:
    """An OpenAssistant conversation tree: a prompter turn with three ranked replies, the best one followed by a
    second prompter turn with two ranked replies of its own."""
    def node(mid: str, role: str, text: str, rank: int | None = None, replies: list | None = None) -> dict:
        return {"message_id": f"{i}-{mid}", "text": text, "role": role, "lang": "en", "review_result": True,
                "deleted": False, **({"rank": rank} if rank is not None else {}), "replies": replies or []}

    follow_up = node("q2", "prompter", "why?", replies=[node("c", "assistant", "the acting", 1),
                                                        node("d", "assistant", "the plot", 0)])
    return {"message_tree_id": f"tree{i}",
            "prompt": node("q1", "prompter", question, replies=[node("a", "assistant", "great fun", 0, [follow_up]),
                                                                node("b", "assistant", "boring", 2),
                                                                node("e", "assistant", "it was ok", 1)])}


def write_shape(tmp_path, shape: str) -> tuple[str, list[str]]:
    """(data path, extra arguments) of one public shape, written under tmp_path."""
    if shape == "shp":
        import datasets

        path = tmp_path / "shp.parquet"
        datasets.Dataset.from_list(shp_rows()).to_parquet(str(path))
        return str(path), ["--data.columns", SHP_COLUMNS]
    records = {"hh": hh_records, "ultrafeedback": ultrafeedback_records,
               "oasst": lambda: [oasst_tree(i, q) for i, q in enumerate(QUESTIONS)]}[shape]()
    path = tmp_path / f"{shape}.jsonl"
    write_jsonl(path, records)
    return str(path), []


SHAPES = ["hh", "ultrafeedback", "shp", "oasst"]


# --------------------------------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    """A tiny causal LM saved like an SFT run's output (no chat template: the plain template is used)."""
    from rlhfkit.models import build_tiny, save_model

    return save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                      tmp_path_factory.mktemp("public") / "sft")


COMMON = ["--data.max-length", "96", "--data.max-prompt-length", "64", "--data.eval-fraction", "0.34",
          "--train.batch-size", "2", "--train.max-steps", "1", "--train.progress", "False", "--train.threads", "1"]

# what each shape holds: 6 prompts (OpenAssistant: 6 trees, a follow-up is held out with its first turn); the
# responses and pairs: 2 and 1 per prompt, OpenAssistant 3 ranked replies (3 pairs) and a follow-up's 2 (1 pair)
KIND = {"hh": "preferences", "ultrafeedback": "preferences", "shp": "rankings", "oasst": "rankings"}
RESPONSES = {"hh": 12, "ultrafeedback": 12, "shp": 12, "oasst": 6 * (3 + 2)}
PAIRS = {"hh": 6, "ultrafeedback": 6, "shp": 6, "oasst": 6 * (3 + 1)}


@pytest.mark.parametrize("shape", SHAPES)
def test_public_shape_trains_one_dpo_step(shape, model_dir, tmp_path, capsys):
    data, extra = write_shape(tmp_path, shape)
    out = tmp_path / "dpo"
    code = cli.main(["dpo", "--model.name", str(model_dir), "--data.train", data, *extra, *COMMON,
                     "--kl-prompts", "2", "--kl-samples", "1", "--max-new-tokens", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 1 and summary["dropped_pairs"] == 0 and summary["kl"] is not None
    assert summary["split"] == {"train_prompts": 4, "eval_prompts": 2, "shared_prompts": 0}
    assert summary["pairs"] + summary["eval_pairs"] == PAIRS[shape]


def test_hh_with_a_broken_record_trains_with_data_invalid_skip(model_dir, tmp_path, capsys):
    """HH-RLHF as published holds records whose two sides are identical: they stop a run, or are skipped and
    counted with --data.invalid skip."""
    records = hh_records()
    records.insert(2, {"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"})
    write_jsonl(tmp_path / "hh.jsonl", records)
    args = ["dpo", "--model.name", str(model_dir), "--data.train", str(tmp_path / "hh.jsonl"), *COMMON]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 1
    assert capsys.readouterr().err.strip().endswith("hh.jsonl:3: field 'rejected': chosen and rejected are "
                                                    "identical: the pair carries no preference")
    assert cli.main([*args, "--data.invalid", "skip", "--out", str(tmp_path / "b")]) == 0
    assert "1 invalid records skipped (--data.invalid skip); the first: " in capsys.readouterr().err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["pairs"] + summary["eval_pairs"] == PAIRS["hh"]


def rm_train(model_dir, data, extra, out, *more) -> tuple[dict, float]:
    """Run one step of `rlhfkit rm train`; (summary, the step's training loss)."""
    code = cli.main(["rm", "train", "--model.name", str(model_dir), "--data.train", data, *extra, *COMMON, *more,
                     "--out", str(out)])
    assert code == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), next(m["train/loss"] for m in metrics if "train/loss" in m)


@pytest.mark.parametrize("shape", SHAPES)
def test_public_shape_trains_one_reward_model_step(shape, model_dir, tmp_path):
    data, extra = write_shape(tmp_path, shape)
    summary, loss = rm_train(model_dir, data, extra, tmp_path / "rm")
    assert summary["step"] == 1 and summary["data"]["kind"] == KIND[shape]
    assert summary["data"]["split"] == {"train_prompts": 4, "eval_prompts": 2, "shared_prompts": 0}
    seen = [summary["data"][side]["truncation"] for side in ("train", "eval")]
    assert sum(s["seen"] for s in seen) == RESPONSES[shape] and not any(s["truncated"] for s in seen)
    if shape in ("ultrafeedback", "shp"):
        # the scores reach the margin: score gaps of 3.5 to 12 points, at a margin of 1 per point, make the
        # Bradley-Terry loss -log sigmoid(r_c - r_r - gap) several nats where, without it, it is about log 2
        _, with_margin = rm_train(model_dir, data, extra, tmp_path / "margin", "--margin", "1")
        assert loss < 0.75 and with_margin > 3


# ------------------------------------------------------------------------------- same tokens as string records
@pytest.fixture(scope="module")
def chat_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer: a real (ChatML) chat template, whose EOS is <|im_end|>."""
    from transformers import AutoTokenizer

    from rlhfkit.models import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir())


def string_equivalents(shape: str, chat: bool) -> list[dict]:
    """The string records each shape's records must encode exactly like, written out by hand: with a chat
    template a conversation's string equivalent is its user turn (or, for a longer history, the text the template
    renders, which is not templated again); without one it is the plain template, "User: ...\\nAssistant:" and
    the reply after a space."""
    def convo(q: str) -> str:
        return q if chat else f"User: {q}\nAssistant:"

    space = "" if chat else " "
    if shape == "hh":  # a string prompt on both sides: the same string records under either tokenizer
        history = f"\n\nHuman: {QUESTIONS[-1]}\n\nAssistant: a good one\n\nHuman: why?\n\nAssistant:"
        return [*({"prompt": f"\n\nHuman: {q}\n\nAssistant:", "chosen": " great fun", "rejected": " boring"}
                  for q in QUESTIONS[:-1]),
                {"prompt": history, "chosen": " the acting", "rejected": " it was bad"}]
    if shape == "ultrafeedback":
        return [{"prompt": convo(q), "chosen": space + "great fun", "rejected": space + "boring",
                 "score_chosen": 8.0, "score_rejected": 3.5 + i % 2} for i, q in enumerate(QUESTIONS)]
    if shape == "shp":  # the post is a string prompt: a continuation without a template, one user turn with it
        return [{"prompt": q, "responses": ["great fun", "boring"], "ranking": [0, 1], "scores": [10 + i, 3]}
                for i, q in enumerate(QUESTIONS)]
    out = []
    for q in QUESTIONS:  # OpenAssistant: each tree's first turn, then its follow-up
        follow_up = CHAT_HISTORY.format(q=q) if chat else f"User: {q}\nAssistant: great fun\nUser: why?\nAssistant:"
        out += [{"prompt": convo(q), "responses": [space + r for r in ("great fun", "it was ok", "boring")],
                 "ranking": [0, 1, 2]},
                {"prompt": follow_up, "responses": [space + "the plot", space + "the acting"], "ranking": [0, 1]}]
    return out


CHAT_HISTORY = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\ngreat fun<|im_end|>\n"
                "<|im_start|>user\nwhy?<|im_end|>\n<|im_start|>assistant\n")
"""SmolLM2's template's text of the OpenAssistant follow-up prompt, up to its assistant header."""


def read_shape(tmp_path, shape: str) -> tuple[list[dict], str]:
    from rlhfkit.data import detect_kind, read_records

    data, extra = write_shape(tmp_path, shape)
    columns = extra[1] if extra else None
    kind = detect_kind(data, ("preferences", "rankings"), columns=columns)
    return read_records(data, kind, columns), kind


def tokens(examples) -> list[tuple[list[int], list[int]]]:
    return [(e.input_ids, e.loss_mask) for e in examples]


ENCODING = dict(max_length=512, max_prompt_length=256)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
@pytest.mark.parametrize("shape", SHAPES)
def test_public_shape_encodes_like_its_string_records(shape, chat, tmp_path, tiny_tokenizer, chat_tokenizer):
    from rlhfkit.config import DataConfig
    from rlhfkit.dpo import encode_pairs
    from rlhfkit.dpo.objective import as_pairs
    from rlhfkit.reward.groups import encode_groups

    tok = chat_tokenizer if chat else tiny_tokenizer
    data = DataConfig(**ENCODING)
    records, kind = read_shape(tmp_path, shape)
    strings = string_equivalents(shape, chat)
    assert kind == KIND[shape]

    pairs, dropped = encode_pairs(tok, as_pairs(records, kind), data)
    expected, _ = encode_pairs(tok, as_pairs(strings, kind), data)
    assert dropped == 0 and len(pairs) == PAIRS[shape]
    assert [tokens([p.chosen, p.rejected]) for p in pairs] == [tokens([p.chosen, p.rejected]) for p in expected]

    groups, _ = encode_groups(tok, records, data)  # the reward model's view: responses best first
    expected_groups, _ = encode_groups(tok, strings, data)
    assert [(tokens(g.examples), g.ranks, g.scores) for g in groups] == \
        [(tokens(g.examples), g.ranks, g.scores) for g in expected_groups]
    assert [g.scores for g in groups] == {
        "hh": [None] * 6, "ultrafeedback": [[8.0, 3.5], [8.0, 4.5]] * 3, "shp": [[10.0 + i, 3.0] for i in range(6)],
        "oasst": [None] * 12}[shape]


def trained(tok, example) -> str:
    return tok.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])


def test_the_trained_text_literally(tmp_path, tiny_tokenizer, chat_tokenizer):
    from rlhfkit.data import encode_pair

    (uf, *_), _ = read_shape(tmp_path, "ultrafeedback")
    plain = encode_pair(tiny_tokenizer, uf["prompt"], uf["chosen"], **ENCODING)
    assert tiny_tokenizer.decode(plain.input_ids) == "<|bos|>User: the movie was\nAssistant: great fun<|endoftext|>"
    assert trained(tiny_tokenizer, plain) == " great fun<|endoftext|>"
    chat = encode_pair(chat_tokenizer, uf["prompt"], uf["chosen"], **ENCODING)
    assert chat_tokenizer.decode(chat.input_ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nthe movie was<|im_end|>\n<|im_start|>assistant\ngreat fun<|im_end|>")
    assert trained(chat_tokenizer, chat) == "great fun<|im_end|>"

    *_, hh = read_shape(tmp_path, "hh")[0]  # the multi-turn transcript: only the last reply is trained
    assert trained(tiny_tokenizer, encode_pair(tiny_tokenizer, hh["prompt"], hh["chosen"], **ENCODING)) == \
        " the acting<|endoftext|>"
    follow_up = read_shape(tmp_path, "oasst")[0][1]
    enc = encode_pair(tiny_tokenizer, follow_up["prompt"], follow_up["responses"][0], **ENCODING)
    assert tiny_tokenizer.decode(enc.input_ids) == (
        "<|bos|>User: the movie was\nAssistant: great fun\nUser: why?\nAssistant: the plot<|endoftext|>")
    assert trained(tiny_tokenizer, enc) == " the plot<|endoftext|>"


def test_an_implicit_prompt_cut_from_template_text_encodes_like_the_conversation(tmp_path, chat_tokenizer):
    from rlhfkit.data import encode_pair, read_records

    history = [{"role": "user", "content": "the movie was"}, {"role": "assistant", "content": "great fun"},
               {"role": "user", "content": "why?"}]
    rendered = [chat_tokenizer.apply_chat_template([*history, {"role": "assistant", "content": reply}],
                                                   tokenize=False) for reply in ("the plot", "the acting")]
    write_jsonl(tmp_path / "texts.jsonl", [{"chosen": rendered[0], "rejected": rendered[1]}])
    (rec,) = read_records(tmp_path / "texts.jsonl", "preferences")
    assert rec == {"prompt": CHAT_HISTORY.format(q="the movie was"), "chosen": "the plot<|im_end|>",
                   "rejected": "the acting<|im_end|>"}
    for side, reply in (("chosen", "the plot"), ("rejected", "the acting")):
        cut = encode_pair(chat_tokenizer, rec["prompt"], rec[side], **ENCODING)
        assert tokens([cut]) == tokens([encode_pair(chat_tokenizer, history, reply, **ENCODING)])
        assert trained(chat_tokenizer, cut) == reply + "<|im_end|>"


MISTRAL_STYLE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                 "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
                 "{% endfor %}")
"""A Llama 2 / Mistral style template: its generation prompt is empty, a prompt ends with the user turn's
` [/INST]`."""


def test_an_implicit_prompt_cut_after_inst_is_not_templated_again(tmp_path, tiny_tokenizer):
    import copy

    from rlhfkit.data import encode_pair, read_records

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = MISTRAL_STYLE
    history = [msg("user", "the movie was"), msg("assistant", "great fun"), msg("user", "why?")]
    rendered = [tok.apply_chat_template([*history, msg("assistant", reply)], tokenize=False)
                for reply in ("the plot", "the acting")]
    write_jsonl(tmp_path / "texts.jsonl", [{"chosen": rendered[0], "rejected": rendered[1]}])
    (rec,) = read_records(tmp_path / "texts.jsonl", "preferences")
    assert rec == {"prompt": "<|bos|>[INST] the movie was [/INST]great fun<|endoftext|>[INST] why? [/INST]",
                   "chosen": "the plot<|endoftext|>", "rejected": "the acting<|endoftext|>"}
    cut = encode_pair(tok, rec["prompt"], rec["chosen"], **ENCODING)
    assert tokens([cut]) == tokens([encode_pair(tok, history, "the plot", **ENCODING)])
    assert tok.decode(cut.input_ids) == rendered[0] and trained(tok, cut) == "the plot<|endoftext|>"


# ----------------------------------------------------------------------------------------- malformed variants
def conversation(q: str, reply: str) -> list[dict]:
    return [msg("user", q), msg("assistant", reply)]


def oasst_without_text() -> dict:
    tree = oasst_tree(1, "a film")
    del tree["prompt"]["replies"][1]["text"]  # the reply ranked last
    return tree


GOOD_PAIR = {"prompt": [msg("user", "the movie was")], "chosen": [msg("assistant", "great")],
             "rejected": [msg("assistant", "bad")]}
GOOD_RANKING = {"prompt": "the movie was", "responses": ["great", "bad"], "scores": [3, 1]}
BAD = {  # case: (good first record, bad second record, what the error line says after "file:2: ")
    "chosen without an assistant turn": (GOOD_PAIR, {**GOOD_PAIR, "chosen": [msg("user", "great")]},
                                         "field 'chosen': has no assistant reply"),
    "conversations with different prompts": (
        GOOD_PAIR, {"chosen": conversation("the movie was", "great"), "rejected": conversation("a film", "bad")},
        "field 'rejected': chosen and rejected continue different conversations"),
    "HH texts with different prompts": (
        hh_records()[-1], {"chosen": "\n\nHuman: hi\n\nAssistant: yes\n\nHuman: why?\n\nAssistant: fun",
                           "rejected": "\n\nHuman: hi\n\nAssistant: no\n\nHuman: why?\n\nAssistant: dull"},
        "field 'chosen': chosen and rejected differ before their last '\\n\\nAssistant:'"),
    "an empty conversation prompt": (GOOD_PAIR, {**GOOD_PAIR, "prompt": []},
                                     "field 'prompt': is an empty conversation"),
    "implicit conversations without a history": (
        GOOD_PAIR, {"chosen": [msg("assistant", "great")], "rejected": [msg("assistant", "bad")]},
        "field 'prompt': no prompt: give 'prompt', or the conversation before the assistant reply"),
    "a prompt ending with an assistant turn": (
        GOOD_PAIR, {**GOOD_PAIR, "prompt": conversation("the movie was", "great")},
        "field 'prompt': a conversation prompt must end with a user turn, not assistant"),
    "a bad role": (GOOD_PAIR, {**GOOD_PAIR, "prompt": [msg("human", "the movie was")]},
                   "field 'prompt': message 0: role must be user, assistant or system"),
    "an empty content": (GOOD_PAIR, {**GOOD_PAIR, "chosen": conversation("the movie was", " ")},
                         "field 'chosen': message 1: content must be a non-empty string"),
    "a response of two turns": (
        GOOD_RANKING, {**GOOD_RANKING, "responses": [[msg("assistant", "great"), msg("assistant", "more")], "bad"]},
        "field 'responses[0]': expected one assistant turn, got a conversation"),
    "scores of the wrong length": (GOOD_RANKING, {**GOOD_RANKING, "scores": [3, 1, 2]},
                                   "field 'scores': expected a list of 2 finite numbers"),
    "an infinite score": (GOOD_RANKING, {**GOOD_RANKING, "scores": [float("inf"), 1]},
                          "field 'scores': expected a list of 2 finite numbers"),
    "boolean scores": (GOOD_RANKING, {**GOOD_RANKING, "scores": [True, False]},
                       "field 'scores': expected a list of 2 finite numbers"),
    "a boolean score_chosen": (ultrafeedback_records()[0], {**ultrafeedback_records()[1], "score_chosen": True},
                               "field 'score_chosen': expected a finite number (or null), got True"),
    "an OpenAssistant message without text": (oasst_tree(0, "the movie was"), oasst_without_text(),
                                              "field 'prompt': message 1-b: text must be a non-empty string"),
}


def write_bad(tmp_path, case: str) -> str:
    """The case's file: a good record, then the bad one. An infinite score is written as 1e999, which JSON
    reads as infinity (NaN and Infinity themselves are refused as not JSON)."""
    good, bad, _ = BAD[case]
    path = tmp_path / f"{case.replace(' ', '-')}.jsonl"
    lines = [json.dumps(good), json.dumps(bad).replace("Infinity", "1e999")]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


TRAINERS = {"dpo": ["dpo"], "rm train": ["rm", "train"]}


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("case", BAD)
def test_a_malformed_record_fails_with_one_line_naming_file_and_line(case, trainer, model_dir, tmp_path, capsys):
    data = write_bad(tmp_path, case)
    out = tmp_path / "out"
    line = fails_cleanly([*TRAINERS[trainer], "--data.train", data, "--model.name", str(model_dir),
                          "--out", str(out)], capsys, [], [out], exit_code=1)
    assert line.startswith(f"rlhfkit: error: {data}:2: {BAD[case][2]}"), line


@pytest.mark.parametrize("trainer", TRAINERS)
def test_data_columns_naming_a_missing_column_or_malformed_fail_with_one_line(trainer, model_dir, tmp_path, capsys):
    data, _ = write_shape(tmp_path, "shp")
    capsys.readouterr()  # writing the parquet file draws a progress bar
    out = tmp_path / "out"
    argv = [*TRAINERS[trainer], "--data.train", data, "--model.name", str(model_dir), "--out", str(out)]
    line = fails_cleanly([*argv, "--data.columns", "prompt=history,responses=human_ref_A+human_ref_C"], capsys, [],
                         [out], exit_code=1)
    assert line.startswith(f"rlhfkit: error: {data}:1: the column mapping sends 'responses' to missing column "
                           "'human_ref_C' (the record has 'post_id', 'domain',")
    line = fails_cleanly([*argv, "--data.columns", "prompt:history"], capsys, [], [out], exit_code=1)
    assert line == ("rlhfkit: error: column mapping: cannot read 'prompt:history': expected field=column (or "
                    "field=column+column for a list), e.g. prompt=question,chosen=good,rejected=bad")


def test_a_parquet_row_with_a_non_finite_score_is_named(model_dir, tmp_path, capsys):
    import datasets

    rows = shp_rows()
    rows[1]["score_B"] = float("nan")  # parquet holds NaN, which JSON Lines cannot
    data = tmp_path / "shp.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(data))
    capsys.readouterr()
    out = tmp_path / "out"
    line = fails_cleanly(["rm", "train", "--data.train", str(data), "--data.columns", SHP_COLUMNS, "--model.name",
                          str(model_dir), "--out", str(out)], capsys, [], [out], exit_code=1)
    assert line == f"rlhfkit: error: {data}:2: field 'scores': expected a list of 2 finite numbers, one per response"


# ---------------------------------------------------------------------------------- conversation prompts, end to end
CONVERSATIONS = [[msg("user", "the movie was")],
                 [msg("system", "be kind"), msg("user", "a film about")],
                 [msg("user", "i loved the"), msg("assistant", "acting"), msg("user", "why?")],
                 [msg("user", "the plot was")]]


def test_conversation_prompts_are_sampled_judged_and_trained_on_and_kept(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "lengthjudge.py").write_text(
        "def longer(prompts, responses):\n"
        "    assert all(isinstance(p, str) for p in prompts)  # a module:function judge is given text\n"
        "    return [float(len(r)) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": c} for c in CONVERSATIONS])

    code = cli.main(["sample", "--prompts", str(prompts), "--model", str(model_dir), "--out", str(tmp_path / "c.jsonl"),
                     "--num-samples", "2", "--min-new-tokens", "1", "--max-new-tokens", "3"])
    assert code == 0, capsys.readouterr().err
    candidates = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [c["prompt"] for c in candidates] == CONVERSATIONS

    out = tmp_path / "online"
    code = cli.main(["dpo", "--online", "--prompts", str(prompts), "--model.name", str(model_dir), "--out", str(out),
                     "--judge", "lengthjudge:longer", "--rounds", "1", "--samples-per-prompt", "3",
                     "--max-new-tokens", "3", "--data.eval-fraction", "0.25",
                     "--kl-prompts", "1", "--kl-samples", "1", "--train.batch-size", "2", "--train.progress", "False"])
    assert code == 0, capsys.readouterr().err
    held = [json.loads(line)["prompt"] for line in (out / "heldout_prompts.jsonl").read_text().splitlines()]
    round_prompts = [json.loads(line)["prompt"] for name in ("candidates.jsonl", "eval_candidates.jsonl")
                     for line in (out / "round-1" / name).read_text().splitlines()]
    assert len(held) == 1 and sorted(map(json.dumps, round_prompts)) == sorted(map(json.dumps, CONVERSATIONS))
    pairs = [json.loads(line) for line in (out / "round-1" / "preferences.jsonl").read_text().splitlines()]
    assert pairs and all(p["prompt"] in CONVERSATIONS and p["prompt"] not in held for p in pairs)

    code = cli.main(["ppo", "--prompts", str(prompts), "--model.name", str(model_dir), "--out", str(tmp_path / "ppo"),
                     "--reward", "lengthjudge:longer", "--train.max-steps", "1", "--max-new-tokens", "3",
                     "--train.progress", "False"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["step"] == 1
