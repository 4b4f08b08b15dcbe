"""Reward models rlhfkit did not train (a public one from the hub): `rm:PATH`, `load_reward_scorer` and `rm score`
read them as their own tokenizer encodes — the chat template's conversation, else the (prompt, response) text
pair — score them raw unless statistics are measured on a reference file, and refuse normalisation without any.

The models are built here with plain transformers and saved with no rlhfkit keys in their config; every expected
score is transformers' own forward on ids written out by hand (or by the tokenizer's documented call)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from rlhfkit import cli
from rlhfkit.data import write_jsonl

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
"""What SmolLM2's chat template writes first when a conversation has no system turn."""

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "good", "bad", "hi", "there", "i",
         "think", "plot", "fun"]
"""A BERT word-piece vocabulary small enough to read ids by hand: [CLS] = 2, [SEP] = 3, "hi" = 10, ..."""


@pytest.fixture(autouse=True)
def quiet_loading():
    """No weight-loading progress bars on stderr: the notes and the error line are what the tests read there."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    yield
    if bars:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


@pytest.fixture(scope="module")
def chat_rm(tmp_path_factory):
    """(dir, model, tokenizer): a tiny LlamaForSequenceClassification under SmolLM2's tokenizer (a ChatML
    template), reading at most 64 positions, saved by transformers alone."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.models import smollm2_dir

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("foreign") / "chat-rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


@pytest.fixture(scope="module")
def bert_rm(tmp_path_factory):
    """(dir, model, tokenizer): a tiny BertForSequenceClassification (one label, 16 positions) whose BertTokenizer
    is read from a vocabulary file: no chat template, no EOS ([SEP] ends a text)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path = tmp_path_factory.mktemp("foreign") / "bert-rm"
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer.from_pretrained(path)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=1, initializer_range=0.5)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def plain_score(model, **inputs) -> float:
    """transformers' own reward of one input (lists of ids, or what a tokenizer returned)."""
    with torch.no_grad():
        return float(model(**{k: torch.as_tensor(v).reshape(1, -1) for k, v in inputs.items()}).logits[0, 0])


# ------------------------------------------------------------------------------------- a chat-template model
def test_a_chat_reward_model_from_elsewhere_scores_the_rendered_conversation_raw(chat_rm, capsys):
    from rlhfkit.labeling.gold import make_scorer

    path, model, tok = chat_rm
    prompts = ["hi there", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the movie?"}]]
    responses = ["hello!", "It was good, with a plot that keeps going."]
    texts = [SYSTEM + "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nhello!<|im_end|>\n",
             "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe movie?<|im_end|>\n"
             "<|im_start|>assistant\nIt was good, with a plot that keeps going.<|im_end|>\n"]
    for prompt, response, text in zip(prompts, responses, texts):
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        assert tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False) == text
    scorer = make_scorer(f"rm:{path}")
    note = capsys.readouterr().err.splitlines()
    assert len(note) == 1 and note[0].startswith(f"rm: {path} stores no reward normalisation") \
        and "--norm-reference FILE" in note[0]
    scores = scorer(prompts, responses)  # one batch of two lengths: padding must not move a score
    expected = [plain_score(model, **tok(text)) for text in texts]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-4  # distinct scores: the pairing is checked
    assert tok.eos_token == "<|im_end|>" and tok(texts[0])["input_ids"][-1] != tok.eos_token_id  # read at "\n"


def test_an_over_long_conversation_keeps_its_end(chat_rm):
    from rlhfkit.reward import load_reward_scorer

    path, model, tok = chat_rm
    response = " ".join(f"word{i}" for i in range(80))
    ids = tok(SYSTEM + f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>\n")["input_ids"]
    assert len(ids) > 64  # the model reads 64 positions
    [score] = load_reward_scorer(path, normalize=False)(["hi"], [response])
    assert score == pytest.approx(plain_score(model, input_ids=ids[-64:]), abs=1e-5)


# ------------------------------------------------------------------------------------------ an encoder model
def test_an_encoder_reward_model_scores_the_text_pair_as_transformers_does(bert_rm):
    from rlhfkit.reward import load_reward_scorer

    path, model, tok = bert_rm
    prompts, responses = ["hi there", "i think", "the movie"], ["the movie was good", "bad", "was fun fun"]
    scores = load_reward_scorer(path, normalize=False)(prompts, responses)  # one padded batch
    assert tok("hi there", "the movie was good")["input_ids"] == [2, 10, 11, 3, 5, 6, 7, 8, 3]
    expected = [plain_score(model, **tok(p, r)) for p, r in zip(prompts, responses)]
    assert scores == pytest.approx(expected, abs=1e-5)
    # the segment ids count: the same ids read as one segment score otherwise
    enc = tok(prompts[0], responses[0])
    assert abs(plain_score(model, input_ids=enc["input_ids"]) - expected[0]) > 1e-4


def test_an_over_long_text_pair_is_cut_from_the_left_within_the_longer_text(bert_rm):
    from rlhfkit.reward import load_reward_scorer

    path, model, tok = bert_rm
    response = "the plot was bad " * 5  # 20 words: [CLS] hi there [SEP] + 20 + [SEP] > 16 positions
    [score] = load_reward_scorer(path, normalize=False)(["hi there"], [response])
    kept = [14, 7, 9, 5, 14, 7, 9, 5, 14, 7, 9]  # the response's last 11 words: 2 + 11 + 3 special = 16
    ids, types = [2, 10, 11, 3, *kept, 3], [0] * 4 + [1] * 12
    assert score == pytest.approx(plain_score(model, input_ids=ids, token_type_ids=types), abs=1e-5)


def test_a_decoder_tokenizer_without_a_pad_token_is_given_one_for_batches(tmp_path, tiny_tokenizer, tiny_arch):
    """No chat template and no pad token: the pad is the EOS, which ends each text pair (appended, as the
    tokenizer does not); a batch of different lengths scores as each pair alone."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import build_tiny
    from rlhfkit.reward import load_reward_scorer

    tok = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer,
                                   bos_token=tiny_tokenizer.bos_token, eos_token=tiny_tokenizer.eos_token)
    assert tok.pad_token is None and not tok.chat_template
    config = build_tiny(tiny_tokenizer, tiny_arch, seed=0).config
    config.num_labels, config.pad_token_id = 1, None
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = load_reward_scorer(tmp_path / "rm", normalize=False)
    prompts, responses = ["the movie", "i think the plot"], [" was great fun", " bad"]
    batched = scorer(prompts, responses)
    for p, r, score in zip(prompts, responses, batched):
        ids = [*tok(p, r)["input_ids"], tok.eos_token_id]
        assert score == pytest.approx(plain_score(model, input_ids=ids), abs=1e-5) == scorer([p], [r])[0]


# ----------------------------------------------------------------------------------------- normalisation
def write_reference(path, prompts_responses) -> None:
    write_jsonl(path, [{"prompt": p, "responses": rs} for p, rs in prompts_responses])


REFERENCE = [("hi there", ["the movie was good", "bad"]), ("i think", ["fun", "the plot was bad", "good good"])]


def test_norm_reference_normalises_by_the_raw_rewards_of_its_responses(bert_rm, tmp_path, capsys):
    from rlhfkit.reward import load_reward_scorer

    path, _, _ = bert_rm
    write_reference(tmp_path / "ref.jsonl", REFERENCE)
    raw = load_reward_scorer(path, normalize=False)
    reference = raw([p for p, rs in REFERENCE for _ in rs], [r for _, rs in REFERENCE for r in rs])
    mean, std = statistics.fmean(reference), statistics.pstdev(reference)
    capsys.readouterr()
    scorer = load_reward_scorer(path, norm_reference=str(tmp_path / "ref.jsonl"))
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"rm: reward normalisation measured on {tmp_path / 'ref.jsonl'}: mean {mean:.4f}, "
                    f"std {std:.4f} over 5 responses")
    prompts, responses = ["the movie", "i think"], ["was good", "bad bad"]
    expected = [(r - mean) / std for r in raw(prompts, responses)]
    assert scorer(prompts, responses) == pytest.approx(expected, abs=1e-6)
    assert std > 1e-6 and abs(mean) > 1e-6  # normalising moved the scores: the check is not the identity


def test_norm_reference_overrides_the_statistics_a_model_stores(tmp_path, tiny_tokenizer, tiny_arch):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import build_tiny, save_model
    from rlhfkit.reward import load_reward_scorer

    config = build_tiny(tiny_tokenizer, tiny_arch, seed=0).config
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.rlhfkit_reward_norm = {"mean": 100.0, "std": 4.0, "n": 1, "source": "test"}
    save_model(model, tiny_tokenizer, tmp_path / "rm")
    write_reference(tmp_path / "ref.jsonl", [("the movie", [" was great", " bad", " fun fun"])])
    prompts, responses = ["the movie"], [" was bad"]
    [raw] = load_reward_scorer(tmp_path / "rm", normalize=False)(prompts, responses)
    assert load_reward_scorer(tmp_path / "rm")(prompts, responses) == pytest.approx([(raw - 100.0) / 4.0])
    reference = load_reward_scorer(tmp_path / "rm", normalize=False)(["the movie"] * 3, [" was great", " bad",
                                                                                         " fun fun"])
    measured = load_reward_scorer(tmp_path / "rm", norm_reference=str(tmp_path / "ref.jsonl"))(prompts, responses)
    expected = (raw - statistics.fmean(reference)) / statistics.pstdev(reference)
    assert measured == pytest.approx([expected], abs=1e-6)


def test_normalisation_without_statistics_or_with_normalisation_off_is_refused(bert_rm, tmp_path):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.reward import load_reward_scorer

    path, _, _ = bert_rm
    write_reference(tmp_path / "ref.jsonl", REFERENCE)
    with pytest.raises(RlhfkitError, match="stores no reward normalisation"):
        load_reward_scorer(path, normalize=True)
    with pytest.raises(RlhfkitError, match="give one or the other"):
        load_reward_scorer(path, normalize=False, norm_reference=str(tmp_path / "ref.jsonl"))


# ----------------------------------------------------------------------------------------------- rm score
def test_rm_score_on_a_model_from_elsewhere(bert_rm, tmp_path, capsys):
    from rlhfkit.reward import load_reward_scorer

    path, _, _ = bert_rm
    write_reference(tmp_path / "ref.jsonl", REFERENCE)
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "hi there", "responses": ["good", "the plot was bad"]}])
    common = ["rm", "score", "--model", str(path), "--data", str(tmp_path / "c.jsonl")]
    capsys.readouterr()

    assert cli.main([*common, "--normalize", "--out", str(tmp_path / "refused.jsonl")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhfkit: error: ") and "--norm-reference FILE" in lines[0]
    assert not (tmp_path / "refused.jsonl").exists()

    raw = load_reward_scorer(path, normalize=False)(["hi there"] * 2, ["good", "the plot was bad"])
    assert cli.main([*common, "--out", str(tmp_path / "raw.jsonl")]) == 0
    assert json.loads((tmp_path / "raw.jsonl").read_text())["scores"] == pytest.approx(raw, abs=1e-6)

    norm = load_reward_scorer(path, norm_reference=str(tmp_path / "ref.jsonl"))(["hi there"] * 2,
                                                                                 ["good", "the plot was bad"])
    assert cli.main([*common, "--norm-reference", str(tmp_path / "ref.jsonl"), "--out", str(tmp_path / "n.jsonl")]) == 0
    assert json.loads((tmp_path / "n.jsonl").read_text())["scores"] == pytest.approx(norm, abs=1e-6)
    assert norm != pytest.approx(raw, abs=1e-3)


def test_judge_norm_normalises_a_reward_model_judge_on_the_command_line(bert_rm, tmp_path):
    """`--judge-norm FILE` reaches `rm:PATH` wherever a judge is built: label auto's pair scores are the normalised
    rewards, (raw - mean) / std over the file's responses."""
    import json

    from rlhfkit import cli
    from rlhfkit.data import write_jsonl
    from rlhfkit.reward import load_reward_scorer

    path, _, _ = bert_rm
    write_reference(tmp_path / "ref.jsonl", REFERENCE)
    raw = load_reward_scorer(path, normalize=False)
    reference = raw([p for p, rs in REFERENCE for _ in rs], [r for _, rs in REFERENCE for r in rs])
    mean, std = statistics.fmean(reference), statistics.pstdev(reference)
    write_jsonl(tmp_path / "c.jsonl", [{"prompt": "the movie", "responses": ["was good", "bad bad"]}])
    assert cli.main(["label", "auto", "--candidates", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "p.jsonl"),
                     "--judge", f"rm:{path}", "--judge-norm", str(tmp_path / "ref.jsonl")]) == 0
    [record] = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    expected = sorted(((r - mean) / std for r in raw(["the movie"] * 2, ["was good", "bad bad"])), reverse=True)
    assert record["label"]["scores"] == pytest.approx(expected, abs=1e-5)
