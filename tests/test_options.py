"""Options no other test exercised, each checked against numbers worked out by hand or a measured effect:
top_p (nucleus), the PPO value loss (vf_coef, value_clip_range), the linear / constant lr schedules,
max_grad_norm=None, the reward model's norm_reference and the labelers' Bradley-Terry label_temperature."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.errors import RlhfkitError

NEG = float("-inf")


def share_e(prompts, responses):
    """Toy gold reward (as in test_ppo): the share of a response's characters that are 'e'."""
    return [sum(ch == "e" for ch in r) / max(len(r), 1) for r in responses]


def count_good(prompts, responses):
    """Judge for the online-DPO labelling check: 'good' counts, then 0.01 per character (few exact ties)."""
    return [r.count("good") + 0.01 * len(r) for r in responses]


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    from rlhfkit.models import build_tiny, save_model

    return str(save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                          tmp_path_factory.mktemp("options") / "model"))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    from toy import toy_texts

    from rlhfkit.data import write_jsonl

    path = tmp_path_factory.mktemp("options") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": " ".join(t.split()[:3])} for t in toy_texts(32, seed=3)])
    return str(path)


# ================================================================================================ 1. top_p
def _kept(logits: torch.Tensor, **kw) -> list[int]:
    from rlhfkit.generation import constrain_logits

    return [i for i, v in enumerate(constrain_logits(logits, 0, **kw).tolist()) if v != NEG]


def test_top_p_keeps_the_smallest_set_that_reaches_the_mass_by_hand():
    """p = [.15, .50, .05, .30]. Sorted: token 1 (.50), 3 (.30), 0 (.15), 2 (.05); the mass before each is
    0, .50, .80, .95, and a token is kept while the mass before it is < top_p."""
    from rlhfkit.generation import constrain_logits

    logits = torch.tensor([0.15, 0.50, 0.05, 0.30]).log()
    assert _kept(logits, top_p=0.3) == [1]
    assert _kept(logits, top_p=0.6) == [1, 3]
    assert _kept(logits, top_p=0.85) == [0, 1, 3]
    assert _kept(logits, top_p=0.97) == [0, 1, 2, 3]
    assert torch.equal(constrain_logits(logits, 0, top_p=1.0), logits)  # 1: off
    # renormalised inside the nucleus: .50 / .80 and .30 / .80
    probs = constrain_logits(logits, 0, top_p=0.6).softmax(-1)
    assert probs.tolist() == pytest.approx([0.0, 0.625, 0.0, 0.375], abs=1e-6)
    # the nucleus is taken after the temperature: at T = 0.5 the probabilities are p^2 / sum p^2 =
    # [.0616, .6849, .0068, .2466], so top_p .6 keeps token 1 alone (the mass before token 3 is .685)
    assert _kept(logits, top_p=0.6, temperature=0.5) == [1]
    assert _kept(logits, top_p=0.95, temperature=0.5) == [0, 1, 3]  # .685 + .247 = .932 < .95 before token 0


def _prompt_ids(tok, texts):
    return [tok(t)["input_ids"] for t in texts]


@torch.no_grad()
def _mass_before_sampled(model, rollout, temperature: float = 1.0) -> torch.Tensor:
    """For every sampled response token: the probability mass (under the model's own temperature-scaled
    distribution, recomputed by a teacher-forced forward pass) of the tokens strictly more likely than it.
    A token lies inside the top-p nucleus iff this is < top_p."""
    ids, mask = rollout.input_ids, rollout.attention_mask
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # positions ignore left padding
    logits = model.eval()(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    probs = (logits[:, P - 1 : P - 1 + A].double() / temperature).softmax(-1)  # (N, A, V): column t predicts token t
    chosen = probs.gather(-1, rollout.response_ids[..., None])  # (N, A, 1)
    before = (probs * (probs > chosen)).sum(-1)  # (N, A)
    return before[rollout.response_mask.bool()]


def test_top_p_sampling_only_draws_tokens_inside_the_nucleus(tiny_model, tiny_tokenizer):
    from rlhfkit.generation import sample

    tok = tiny_tokenizer
    prompts = _prompt_ids(tok, ["the movie", "a plot was", "i loved the"])
    kw = dict(num_samples=6, max_new_tokens=8, temperature=0.5)
    nucleus = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, top_p=0.3, seed=11, **kw)
    free = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, top_p=1.0, seed=11, **kw)
    inside = _mass_before_sampled(tiny_model, nucleus, temperature=0.5)
    outside = _mass_before_sampled(tiny_model, free, temperature=0.5)
    assert inside.numel() >= 18 and outside.numel() >= 18
    assert float(inside.max()) < 0.3 + 1e-4  # every top-p draw lies in the nucleus
    # the check can fail: without top-p the same draws often land outside the 0.3 nucleus
    assert int((outside >= 0.3 + 1e-4).sum()) >= 5


def test_a_tiny_top_p_is_greedy_decoding(tiny_model, tiny_tokenizer):
    from rlhfkit.generation import sample

    tok = tiny_tokenizer
    prompts = _prompt_ids(tok, ["the movie", "a plot was", "i"])
    kw = dict(num_samples=2, max_new_tokens=8)
    greedy = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, temperature=0.0, seed=0, **kw)
    for seed in (1, 2):
        tiny = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, top_p=1e-6, seed=seed, **kw)
        assert torch.equal(tiny.response_ids, greedy.response_ids)
        assert torch.equal(tiny.response_mask, greedy.response_mask)
        mask = tiny.response_mask.bool()
        assert torch.equal(tiny.logprobs[mask], torch.zeros(int(mask.sum())))  # a nucleus of one: probability 1
    free = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, top_p=1.0, seed=1, **kw)
    assert not torch.equal(free.response_ids, greedy.response_ids)  # plain sampling is not greedy here


# ============================================================================ 2-3. vf_coef, value_clip_range
def test_value_loss_clip_range_by_hand_with_gradients():
    """0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2) per token; the clipped branch, when it is
    the larger, holds v at the edge of the band and passes no gradient."""
    from rlhfkit import losses

    old = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 1.1, 9.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    per_token, metrics = losses.ppo_value_loss(values, old, returns, mask, 0.2)
    # token 0: band [-.2, .2] -> clipped .2: max(.5^2, .8^2) / 2 = .32 (clipped branch)
    # token 1: R = 0: max(.5^2, .2^2) / 2 = .125 (unclipped branch)
    # token 2: v inside [.8, 1.2]: (1.1 - 3)^2 / 2 = 1.805; token 3 is masked
    assert per_token[0].tolist() == pytest.approx([0.32, 0.125, 1.805, 0.0], abs=1e-6)
    assert float(metrics["ppo/vf_clipfrac"]) == pytest.approx(1 / 3)
    per_token.sum().backward()
    # d/dv: 0 where the clipped branch wins, v - R otherwise, 0 on the masked token
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.5, -1.9, 0.0], abs=1e-6)

    # a wider band (eps .6) leaves token 0 unclipped: (.5 - 1)^2 / 2 = .125, gradient -.5
    wide = values.detach().requires_grad_()
    per_token, metrics = losses.ppo_value_loss(wide, old, returns, mask, 0.6)
    assert per_token[0].tolist() == pytest.approx([0.125, 0.125, 1.805, 0.0], abs=1e-6)
    assert float(metrics["ppo/vf_clipfrac"]) == 0.0
    per_token.sum().backward()
    assert wide.grad[0].tolist() == pytest.approx([-0.5, 0.5, -1.9, 0.0], abs=1e-6)


def _ppo_run(model_dir, prompts_file, out, **options):
    from rlhfkit.ppo import PPOConfig, run_ppo

    cfg = PPOConfig(model=ModelConfig(name=model_dir), prompts=prompts_file, reward=f"{__name__}:share_e",
                    advantage="gae", group_size=1, max_new_tokens=6, eos_penalty=False, ppo_epochs=2,
                    minibatch_size=4,
                    train=TrainConfig(batch_size=8, max_steps=2, save_every=100, log_every=1, progress=False),
                    optim=OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant"), out=str(out), **options)
    summary = run_ppo(cfg)
    return _metrics(out), summary


def _changed(model_dir, trained_dir) -> float:
    """Largest absolute weight change between two saved causal LMs."""
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(trained_dir).state_dict()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_vf_coef_zero_leaves_the_value_head_at_zero(model_dir, prompts_file, tmp_path):
    """The value head starts at 0. With vf_coef 0 its only loss term has weight 0, so the values stay exactly
    0 through every update: the second step's value_explained_var is 1 - Var[R - 0] / Var[R] = 0 exactly. With
    vf_coef 1 (same data, same seeds) the head learns and the explained variance moves off 0."""
    off, _ = _ppo_run(model_dir, prompts_file, tmp_path / "off", vf_coef=0.0)
    on, _ = _ppo_run(model_dir, prompts_file, tmp_path / "on", vf_coef=1.0)
    assert [r["step"] for r in off] == [1, 2]
    assert all(r["ppo/value_loss"] > 0 for r in off)  # the value loss was measured, only weighted by 0
    assert off[0]["ppo/value_explained_var"] == 0.0 and on[0]["ppo/value_explained_var"] == 0.0  # V = 0 at first
    assert off[1]["ppo/value_explained_var"] == 0.0
    assert abs(on[1]["ppo/value_explained_var"]) > 1e-3
    assert _changed(model_dir, tmp_path / "off" / "model") > 1e-3  # the policy itself did train
    # the value loss also trains the shared trunk: the two policies differ
    assert _changed(tmp_path / "off" / "model", tmp_path / "on" / "model") > 1e-6


def test_value_clip_range_sets_how_often_the_value_loss_is_clipped(model_dir, prompts_file, tmp_path):
    """A band wider than any value move never clips (vf_clipfrac exactly 0); a band of 1e-4 clips every token
    whose value moved towards its return after the first minibatch."""
    wide, _ = _ppo_run(model_dir, prompts_file, tmp_path / "wide", vf_coef=1.0, value_clip_range=1e6)
    tight, _ = _ppo_run(model_dir, prompts_file, tmp_path / "tight", vf_coef=1.0, value_clip_range=1e-4)
    assert [r["ppo/vf_clipfrac"] for r in wide] == [0.0, 0.0]
    assert max(r["ppo/vf_clipfrac"] for r in tight) > 0.1
    # the first minibatch is trained at the rollout's own values, where nothing is clipped; so the per-step mean
    # over 2 epochs x 2 minibatches is at most 3/4
    assert all(r["ppo/vf_clipfrac"] <= 0.75 + 1e-6 for r in tight)


# ============================================================================================ 4. schedules
def test_linear_schedule_by_hand():
    """warmup 2: (s + 1) / 3 for s < 2; then min + (1 - min) * (1 - (s - 2) / 8), flat at min past the end."""
    from rlhfkit.loop import lr_lambda

    f = lr_lambda(OptimConfig(schedule="linear", warmup_steps=2, min_lr_ratio=0.2), total_steps=10)
    expected = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 0.9, 4: 0.8, 6: 0.6, 9: 0.3, 10: 0.2, 13: 0.2}
    for step, value in expected.items():
        assert f(step) == pytest.approx(value, abs=1e-12), step


def test_constant_and_cosine_schedules_by_hand():
    from rlhfkit.loop import lr_lambda

    const = lr_lambda(OptimConfig(schedule="constant", warmup_steps=3, min_lr_ratio=0.2), total_steps=10)
    assert [const(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert const(10) == 1.0  # no decay, min_lr_ratio unused
    cos = lr_lambda(OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.2), total_steps=8)
    # progress 1/4: .2 + .8 * (1 + cos(pi / 4)) / 2 = .882843; progress 3/4: .2 + .8 * (1 - .707107) / 2
    assert cos(0) == 1.0 and cos(8) == pytest.approx(0.2)
    assert cos(2) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)))
    assert cos(2) == pytest.approx(0.882843, abs=1e-6) and cos(6) == pytest.approx(0.317157, abs=1e-6)


# ============================================================= 5. max_grad_norm=None (through rlhfkit.loop.fit)
class Vec(torch.nn.Module):
    """One trainable vector; the toy objective w . x has gradient x."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))


@dataclass
class XBatch:
    x: torch.Tensor  # (B, 4)

    def to(self, device):
        return XBatch(self.x.to(device))


def _linear_objective(model, batch):
    return (model.w * batch.x).sum(), {}


def _fit_vec(tmp_path, name, optim: OptimConfig, steps: int):
    from rlhfkit.loop import fit
    from rlhfkit.tracking import Run

    model = Vec()
    cfg = TrainConfig(batch_size=1, max_steps=steps, log_every=1, save_every=1000, progress=False)
    train = [torch.tensor([30.0, -40.0, 0.0, 0.0])] * 4  # gradient norm 50 on every step
    fit(_linear_objective, model, train, lambda xs: XBatch(torch.stack(xs)), cfg, optim, Run(tmp_path / name, cfg))
    return model.w.detach().clone(), _metrics(tmp_path / name)


def test_max_grad_norm_none_applies_the_full_gradient(tmp_path):
    """Adam's first step is lr * g / (|g| + eps) per coordinate. With eps = 100 the step is close to linear in
    the gradient, so clipping shows in the weights: unclipped g = (30, -40) moves w by (-30/130, +40/140);
    clipped to norm 1, g = (.6, -.8) moves it by (-.6/100.6, +.8/100.8)."""
    base = dict(lr=1.0, eps=100.0, warmup_steps=0, schedule="constant", weight_decay=0.0)
    w_free, rows_free = _fit_vec(tmp_path, "free", OptimConfig(max_grad_norm=None, **base), steps=1)
    w_clip, rows_clip = _fit_vec(tmp_path, "clip", OptimConfig(max_grad_norm=1.0, **base), steps=1)
    assert w_free.tolist() == pytest.approx([-30 / 130, 40 / 140, 0.0, 0.0], rel=1e-5)
    assert w_clip.tolist() == pytest.approx([-0.6 / 100.6, 0.8 / 100.8, 0.0, 0.0], rel=1e-4)
    # the logged norm is the true (pre-clipping) norm either way: sqrt(30^2 + 40^2)
    assert rows_free[0]["train/grad_norm"] == pytest.approx(50.0)
    assert rows_clip[0]["train/grad_norm"] == pytest.approx(50.0)


def test_linear_schedule_reaches_the_optimizer(tmp_path):
    """3 steps, warmup 1, linear to 0.5: lr multipliers 1/2, 1, .75 for steps 0-2 (the log shows the next
    step's: 1, .75, .5). A constant gradient keeps Adam's m_hat = g and v_hat = g^2, so every step moves w by
    lr_s * g / (|g| + eps)."""
    optim = OptimConfig(lr=0.1, eps=100.0, warmup_steps=1, schedule="linear", min_lr_ratio=0.5, max_grad_norm=None)
    w, rows = _fit_vec(tmp_path, "linear", optim, steps=3)
    assert [r["train/lr"] for r in rows] == pytest.approx([0.1, 0.075, 0.05])
    total = 0.1 * (0.5 + 1.0 + 0.75)
    assert w.tolist() == pytest.approx([-total * 30 / 130, total * 40 / 140, 0.0, 0.0], rel=1e-5)


# =========================================================================================== 6. norm_reference
def _rm_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "the movie was great terrible fun boring plot film".split()
    out = []
    for _ in range(n):
        a, b = (" " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(2))
        if a != b:
            out.append({"prompt": rng.choice(["the movie", "this film", "i think"]), "chosen": a, "rejected": b})
    return out


def test_norm_reference_sets_the_saved_reward_normalisation(model_dir, tmp_path):
    from rlhfkit.data import write_jsonl
    from rlhfkit.reward import RMConfig, load_reward_scorer, run_rm_train

    write_jsonl(tmp_path / "train.jsonl", _rm_pairs(24, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", _rm_pairs(8, seed=2))
    reference = [{"prompt": p, "responses": [" awful awful awful awful awful", " i", " great film fun plot"],
                  "policy": "ref"} for p in ("the movie", "a story", "i think it", "this film was")]
    write_jsonl(tmp_path / "reference.jsonl", reference)
    cfg = RMConfig(data=DataConfig(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"),
                                   max_length=48, max_prompt_length=8),
                   model=ModelConfig(name=model_dir), norm_reference=str(tmp_path / "reference.jsonl"),
                   train=TrainConfig(batch_size=8, max_steps=2, progress=False, log_every=1000, eval_every=1000,
                                     save_every=1000),
                   optim=OptimConfig(lr=1e-3, warmup_steps=0), out=str(tmp_path / "rm"))
    summary = run_rm_train(cfg)
    norm = summary["reward_norm"]
    assert norm["source"] == str(tmp_path / "reference.jsonl") and norm["n"] == 12

    # independently: the saved model's raw scores of the reference file's 12 responses
    raw = load_reward_scorer(summary["model"], normalize=False)
    prompts = [r["prompt"] for r in reference for _ in r["responses"]]
    values = torch.tensor(raw(prompts, [x for r in reference for x in r["responses"]]), dtype=torch.float64)
    assert norm["mean"] == pytest.approx(float(values.mean()), abs=1e-5)
    assert norm["std"] == pytest.approx(float(values.std(unbiased=False)), abs=1e-5)
    assert norm["std"] > 1e-4  # a real spread, not the all-equal fallback of 1
    normalised = torch.tensor(load_reward_scorer(summary["model"])(prompts, [x for r in reference
                                                                             for x in r["responses"]]))
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(normalised.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)

    # and it is not what the default (the held-out responses) would have given: their statistics differ from
    # the reference file's by far more than the 1e-5 tolerance above (measured: std .0208 vs .0252)
    held = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    held_values = torch.tensor(raw([r["prompt"] for r in held] * 2, [r["chosen"] for r in held]
                                   + [r["rejected"] for r in held]), dtype=torch.float64)
    assert max(abs(float(held_values.mean()) - norm["mean"]),
               abs(float(held_values.std(unbiased=False)) - norm["std"])) > 5e-4


# ======================================================================================= 7. label_temperature
def _flip_rate(records, scores) -> float:
    return sum(scores[r["chosen"]] < scores[r["rejected"]] for r in records) / len(records)


@pytest.mark.parametrize("mode", ["pairs", "rankings"])
def test_label_temperature_flips_a_known_share_of_labels(mode):
    """Bradley-Terry labelling: P(the lower-scored response is preferred) = sigma(-gap / T). Gaps 1 and 3 at
    T = 2 flip with probabilities sigma(-.5) = .3775 and sigma(-1.5) = .1824; T = 0 never flips. For K = 2 a
    Plackett-Luce ranking is the same Bradley-Terry draw."""
    from rlhfkit.labeling.auto import label_candidates

    n = 3000
    expected = {1.0: 1 / (1 + math.exp(0.5)), 3.0: 1 / (1 + math.exp(1.5))}
    assert expected[1.0] == pytest.approx(0.3775, abs=1e-4) and expected[3.0] == pytest.approx(0.1824, abs=1e-4)
    for gap, p in expected.items():
        scores, candidates = {}, []
        for i in range(n):
            hi, lo = f"hi {i}", f"lo {i}"
            scores[hi], scores[lo] = 0.1 * (i % 7) + gap, 0.1 * (i % 7)
            candidates.append({"prompt": f"p{i}", "responses": [lo, hi] if i % 2 else [hi, lo], "policy": "x"})

        def scorer(prompts, responses):
            return [scores[r] for r in responses]

        def as_pairs(records):
            if mode == "pairs":
                return records
            return [{"chosen": r["responses"][r["ranking"][0]], "rejected": r["responses"][r["ranking"][1]]}
                    for r in records]

        exact, _ = label_candidates(candidates, scorer, mode, temperature=0.0, seed=1)
        assert len(exact) == n and _flip_rate(as_pairs(exact), scores) == 0.0
        noisy, _ = label_candidates(candidates, scorer, mode, temperature=2.0, seed=1)
        assert len(noisy) == n and all(r["label"]["temperature"] == 2.0 for r in noisy)
        rate = _flip_rate(as_pairs(noisy), scores)
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (gap, rate, p)  # 4 sigma: ~.035 and ~.028


def test_dpo_label_temperature_reaches_the_online_labeller(model_dir, tmp_path):
    """Online DPO labels its sampled pairs with DPOConfig.label_temperature: each pair records its scores
    (chosen, rejected); the number of pairs whose chosen side scores lower matches sum sigma(-|gap| / T)."""
    from rlhfkit import cli
    from rlhfkit.data import write_jsonl
    from toy import toy_texts

    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": " ".join(t.split()[:2])} for t in toy_texts(24, seed=5)])
    T = 0.1
    out = tmp_path / "online"
    args = ["dpo", "--online", "--rounds", "1", "--prompts", str(tmp_path / "prompts.jsonl"), "--judge",
            f"{__name__}:count_good", "--label-temperature", str(T), "--model.name", model_dir,
            "--samples-per-prompt", "4", "--max-new-tokens", "12", "--train.max-steps", "1",
            "--train.batch-size", "4", "--train.progress", "False", "--data.eval-fraction", "0.25",
            "--kl-prompts", "0", "--out", str(out)]
    assert cli.main(args) == 0
    records = []
    for name in ("preferences.jsonl", "eval_preferences.jsonl"):
        records += [json.loads(x) for x in (out / "round-1" / name).read_text().splitlines() if x.strip()]
    assert len(records) >= 60
    assert all(r["label"]["temperature"] == T for r in records)
    gaps = [abs(r["label"]["scores"][0] - r["label"]["scores"][1]) for r in records]
    flips = sum(r["label"]["scores"][0] < r["label"]["scores"][1] for r in records)
    probs = [1 / (1 + math.exp(g / T)) for g in gaps]
    mean, sd = sum(probs), math.sqrt(sum(p * (1 - p) for p in probs))
    assert mean > 4 * sd + 2  # the temperature matters here: with T = 0 there would be no flip at all
    assert abs(flips - mean) < 4 * sd, (flips, mean, sd)


@pytest.mark.parametrize("argv, message", [
    (["--loss", "dpo", "--tau", "0.3"], "--tau 0.3 does nothing here: only --loss ipo uses it"),
    (["--loss", "ipo", "--label-smoothing", "0.2"], "--label-smoothing 0.2 does nothing here: only --loss cdpo"),
    (["--alpha", "2"], "--alpha 2.0 does nothing here: only --loss unlikelihood"),
    (["--rounds", "3"], "--rounds 3 does nothing here: only --online uses it"),
    (["--judge", "rm:x"], "--judge 'rm:x' does nothing here: only --online"),
    (["--online", "--prompts", "p.jsonl"], "--data.train 'pairs.jsonl' does nothing here: --online trains on pairs"),
])
def test_dpo_refuses_options_that_do_nothing(argv, message):
    from rlhfkit.config import parse
    from rlhfkit.dpo import DPOConfig, check_loss_options

    cfg = parse(DPOConfig, ["--data.train", "pairs.jsonl", *argv])
    with pytest.raises(RlhfkitError, match=re.escape(message)):
        check_loss_options(cfg)


@pytest.mark.parametrize("argv, message", [
    (["--kl.target", "3"], "--kl.target 3.0 does nothing here: only --kl.adaptive uses it"),
    (["--ptx.data", "c.jsonl"], "--ptx.data 'c.jsonl' does nothing here: the pretraining mix is off"),
    (["--advantage", "rloo", "--group-size", "2", "--vf-coef", "0.5"], "--vf-coef 0.5 does nothing here: "
     "--advantage rloo has no value head"),
    (["--no-eos-penalty", "--missing-eos-score", "-2"], "--missing-eos-score -2.0 does nothing here"),
])
def test_ppo_refuses_options_that_do_nothing(argv, message):
    from rlhfkit.config import parse
    from rlhfkit.ppo import PPOConfig, check_config

    cfg = parse(PPOConfig, ["--prompts", "p.jsonl", *argv])
    with pytest.raises(RlhfkitError, match=re.escape(message)):
        check_config(cfg)
    check_config(parse(PPOConfig, ["--prompts", "p.jsonl", "--kl.adaptive", "--kl.target", "3", "--advantage",
                                   "gae", "--ptx.coef", "0.1", "--ptx.data", "c.jsonl"]))  # each used: accepted
