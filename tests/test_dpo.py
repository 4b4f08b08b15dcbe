"""DPO stage: the objective at initialisation, the shared-first-token trap, LoRA reference, reference cache,
learning on a synthetic preference task, every --loss through the CLI, online rounds, beta for a KL budget.

Tiny random Llama models (d=32, 2 layers) on a 300-token BPE; each test takes a few seconds on one core.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

from rlhfkit import cli, ops
from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, TinyArch
from rlhfkit.data import write_jsonl
from rlhfkit.dpo import (
    PAIR_LOSSES,
    DPOConfig,
    Reference,
    attach_ref_logps,
    beta_for_kl_main,
    collate_pairs,
    encode_pairs,
    preference_objective,
    response_token_logps,
)
from rlhfkit.models import apply_lora, build_tiny, load_causal_lm, save_model, train_bpe_tokenizer

ARCH = TinyArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
SUBJECTS = ["the film", "this movie", "the plot", "the cast", "the ending", "the music", "the story", "the acting"]


def good_bad_records(n: int, seed: int = 0) -> list[dict]:
    """Preferred responses say 'good', rejected ones 'bad' (a task a tiny model learns in a few steps)."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        filler = rng.choice(["very", "really", "quite", "so"])
        recs.append({"prompt": f"{subject} was", "chosen": f" {filler} good", "rejected": f" {filler} bad"})
    return recs


@pytest.fixture(scope="module")
def tok():
    texts = [f"{s} was {f} {w}" for s in SUBJECTS for f in ["very", "really", "quite", "so"] for w in ["good", "bad"]]
    return train_bpe_tokenizer(texts * 5, vocab_size=300)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(build_tiny(tok, ARCH, seed=0), tok, path)
    return path


def _pairs(tok, n=8, seed=0):
    return _pairs_of(tok, good_bad_records(n, seed))


def test_objective_at_initialisation_is_log2_with_zero_rewards(tok):
    model = build_tiny(tok, ARCH, seed=1)
    pairs = _pairs(tok)
    reference = Reference(model)  # before training the policy is its own reference
    attach_ref_logps(pairs, reference, tok.pad_token_id, batch_size=3, device="cpu", cache_path=None)
    objective = preference_objective(PAIR_LOSSES["dpo"](DPOConfig(beta=0.5)), reference, beta=0.5)
    model.train()
    loss, metrics = objective(model, collate_pairs(pairs, tok.pad_token_id))
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["logps/chosen"] < 0 and metrics["logps/rejected"] < 0


class KeepLogits(torch.nn.Module):
    """Wraps a model so the logits of the last forward pass keep their gradient."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logits = None

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits.retain_grad()
        self.logits = out.logits
        return out


def test_shared_first_token_gets_zero_gradient(tok):
    model = build_tiny(tok, ARCH, seed=2).eval()
    data = DataConfig(max_length=32, max_prompt_length=16)
    pairs, _ = encode_pairs(tok, [{"prompt": "the film was", "chosen": " very good", "rejected": " very bad"}], data)
    c, r = pairs[0].chosen, pairs[0].rejected
    s = c.prompt_length  # first response column; same prompt on both sides
    assert c.input_ids[s] == r.input_ids[s] and c.input_ids[s + 1] != r.input_ids[s + 1]
    # a reference that differs from the policy, so the loss is not at its symmetric point
    pairs[0].ref_logps = (-3.0, -1.0)
    wrapped = KeepLogits(model)
    objective = preference_objective(PAIR_LOSSES["dpo"](DPOConfig()), Reference(model), beta=0.1)
    batch = collate_pairs(pairs, tok.pad_token_id)
    loss, _ = objective(wrapped, batch)
    loss.backward()
    grad = wrapped.logits.grad  # (2, K, V); kept column j is position s-1+j (first kept = predicts token s)
    # Both rows compute the same function of the weights at the shared position, so only the sum matters.
    shared = grad[0, 0] + grad[1, 0]  # (V,): logits that predict the shared first response token
    differing = grad[0, 1] + grad[1, 1]  # (V,): logits that predict the first differing token
    assert grad[0, 0].abs().max() > 1e-4  # each row alone does receive a gradient...
    assert shared.abs().max() <= 1e-9  # ...but they cancel exactly
    assert differing.abs().max() > 1e-4


@pytest.mark.parametrize("loss", sorted(PAIR_LOSSES))
def test_shared_prefix_batch_gives_the_two_row_loss_and_gradients(tok, loss):
    model = build_tiny(tok, ARCH, seed=4).eval()
    records = good_bad_records(6, seed=2)
    records[0]["chosen"] = " good"  # responses of different lengths and a pair with no shared response token
    pairs = _pairs_of(tok, records)
    for p in pairs:
        p.ref_logps = (-4.0, -3.5)
    objective = preference_objective(PAIR_LOSSES[loss](DPOConfig(beta=0.3)), Reference(model), beta=0.3)
    results = []
    for shared in (False, True):
        model.zero_grad()
        value, metrics = objective(model, collate_pairs(pairs, tok.pad_token_id, shared_prefix=shared))
        value.backward()
        results.append((value.detach(), metrics, [p.grad.clone() for p in model.parameters()]))
    (v0, m0, g0), (v1, m1, g1) = results
    torch.testing.assert_close(v1, v0, atol=1e-5, rtol=1e-5)
    assert m1 == pytest.approx(m0, abs=1e-4)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _pairs_of(tok, records):
    pairs, dropped = encode_pairs(tok, records, DataConfig(max_length=32, max_prompt_length=16))
    assert dropped == 0
    return pairs


def test_lora_reference_is_the_base_model_before_and_after_a_step(tok):
    base = build_tiny(tok, ARCH, seed=3).eval()
    policy = apply_lora(copy.deepcopy(base), LoRAConfig(r=8, target_modules=("q_proj", "v_proj")))
    reference = Reference(policy)
    batch = collate_pairs(_pairs(tok, 4), tok.pad_token_id)

    def base_logps():
        with torch.no_grad():
            t, m = response_token_logps(base, batch)
            return ops.masked_sum(t, m, dim=-1)

    assert torch.allclose(reference.sequence_logps(batch), base_logps(), atol=1e-6)
    objective = preference_objective(PAIR_LOSSES["dpo"](DPOConfig()), reference, beta=0.1)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # LoRA's B starts at 0: the first step moves B, the second makes the adapter matter
        loss, _ = objective(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        t, m = response_token_logps(policy, batch)
        policy_logps = ops.masked_sum(t, m, dim=-1)
    assert not torch.allclose(policy_logps, base_logps(), atol=1e-4)  # the adapter changed the policy
    assert torch.allclose(reference.sequence_logps(batch), base_logps(), atol=1e-6)
    assert policy.training  # the reference pass put the mode back


def test_reference_log_probs_are_taken_with_dropout_off(tok):
    arch = TinyArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64, dropout=0.5)
    policy = build_tiny(tok, arch, seed=4).train()
    batch = collate_pairs(_pairs(tok, 4), tok.pad_token_id)
    with torch.no_grad():
        noisy = [ops.masked_sum(*response_token_logps(policy, batch), dim=-1) for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])  # dropout is really on in training mode
    reference = Reference(policy, frozen=copy.deepcopy(policy))
    assert torch.equal(reference.sequence_logps(batch), reference.sequence_logps(batch))
    assert policy.training and reference.frozen.training  # modes are put back


def _run_args(model_dir, data, out, *extra):
    return ["dpo", "--model.name", str(model_dir), "--data.train", str(data), "--data.max-length", "32",
            "--data.max-prompt-length", "16", "--data.eval-fraction", "0.25", "--train.batch-size", "4",
            "--train.max-steps", "1", "--train.progress", "False", "--train.threads", "1", "--kl-prompts", "2",
            "--kl-samples", "1", "--max-new-tokens", "4", "--out", str(out), *extra]


def test_cached_reference_equals_per_step_and_cache_is_reused_then_invalidated(tok, model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, good_bad_records(8))
    out = tmp_path / "run"
    assert cli.main(_run_args(model_dir, data, out)) == 0
    first = json.loads((out / "summary.json").read_text())
    assert first["ref_cache"] == "miss" and (out / "ref_logps.pt").exists()
    cached = torch.load(out / "ref_logps.pt")["logps"]  # (N, 2), train pairs then eval pairs

    # per-step reference log-probs (frozen copy of the initial model) equal the cached ones
    model, tokenizer = load_causal_lm(ModelConfig(name=str(model_dir)))
    pairs, _ = encode_pairs(tokenizer, good_bad_records(8), DataConfig(max_length=32, max_prompt_length=16))
    per_step = Reference(model, frozen=copy.deepcopy(model)).sequence_logps(collate_pairs(pairs, tok.pad_token_id))
    assert torch.allclose(torch.sort(cached.flatten()).values, torch.sort(per_step).values, atol=1e-5)

    assert cli.main([*_run_args(model_dir, data, out), "--train.resume"]) == 0  # same directory: resume
    assert json.loads((out / "summary.json").read_text())["ref_cache"] == "hit"
    changed = good_bad_records(8, seed=7)
    changed[0]["chosen"] = " so very good"
    write_jsonl(data, changed)
    assert cli.main([*_run_args(model_dir, data, out), "--train.resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["ref_cache"] == "miss"


def test_tiny_dpo_learns_the_preference(tok, model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, good_bad_records(64))
    out = tmp_path / "run"
    args = _run_args(model_dir, data, out, "--beta", "0.5", "--optim.lr", "3e-3", "--optim.warmup-steps", "2",
                     "--train.max-steps", "30", "--train.eval-every", "30", "--train.batch-size", "8")
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    # At initialisation the implicit rewards are exactly 0: accuracy 0 (no strict win) and margin 0.
    assert summary["eval"]["eval/rewards/accuracy"] >= 0.9
    assert summary["eval"]["eval/rewards/margin"] > 0.5
    assert summary["eval"]["eval/loss"] < math.log(2) - 0.2
    assert summary["kl"] is not None and (out / "model" / "config.json").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*metrics)
    for name in ["train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracy", "train/rewards/margin",
                 "train/logps/chosen", "train/logps/rejected", "objective/kl"]:
        assert name in names


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo", "preferred_ft", "unlikelihood"])
def test_each_loss_runs_one_step_through_the_cli(loss, model_dir, tmp_path):
    data = tmp_path / "rankings.jsonl"  # rankings exercise the expansion into pairs
    write_jsonl(data, [{"prompt": f"{s} was", "responses": [" good", " bad", " so bad"], "ranking": [0, 1, 2]}
                       for s in SUBJECTS])
    out = tmp_path / loss
    # each loss also takes one of the reference set-ups: cached / per step, full fine-tuning / LoRA
    setups = {"dpo": [], "ipo": ["--ref-mode", "per_step"], "cdpo": ["--lora.r", "4"],
              "preferred_ft": ["--lora.r", "4", "--ref-mode", "per_step"], "unlikelihood": []}
    own = {"ipo": ["--tau", "0.2"], "cdpo": ["--label-smoothing", "0.2"], "unlikelihood": ["--alpha", "0.5"]}
    extra = ["--loss", loss, *own.get(loss, []), *setups[loss]]
    if loss in ("preferred_ft", "unlikelihood"):  # a step large enough to measure its direction below
        extra += ["--optim.lr", "1e-2", "--optim.warmup-steps", "0"]
    assert cli.main(_run_args(model_dir, data, out, *extra)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"] == loss and summary["step"] == 1 and summary["pairs"] == 6 * 3
    assert summary["split"] == {"train_prompts": 6, "eval_prompts": 2, "shared_prompts": 0}
    assert summary["ref_cache"] == ("per_step" if "per_step" in setups[loss] else "miss")
    # the one step's loss is taken before the update, at policy == reference: log 2 for (c)DPO, 1/(4 tau^2) for IPO
    at_init = {"dpo": math.log(2), "cdpo": math.log(2), "ipo": 1 / (4 * 0.2**2)}
    if loss in at_init:
        assert summary["train"]["train/loss"] == pytest.approx(at_init[loss], rel=1e-4)
    assert math.isfinite(summary["train"]["train/loss"])
    if loss in ("preferred_ft", "unlikelihood"):
        _check_baseline_direction(loss, model_dir, data, out / "model")


def _check_baseline_direction(loss, initial_dir, data, trained_dir):
    """The saved model moved the way its objective pulls, measured on all the run's training pairs against
    the initial model: preferred-FT raises log pi(chosen); unlikelihood lowers its own loss (mean NLL of the
    chosen tokens minus alpha * mean log(1 - p) of the rejected ones) and so widens log pi(' good') (never
    rejected) over log pi(' so bad') (never chosen)."""
    from rlhfkit import losses
    from rlhfkit.dpo import load_pair_records

    train_records, _ = load_pair_records(DataConfig(train=str(data), eval_fraction=0.25), seed=0)
    assert len(train_records) == 6 * 3

    def measure(path):
        model, tokenizer = load_causal_lm(ModelConfig(name=str(path)))
        pairs = _pairs_of(tokenizer, train_records)
        with torch.no_grad():
            token_logps, mask = response_token_logps(model.eval(), collate_pairs(pairs, tokenizer.pad_token_id))
        B = len(pairs)
        seq = ops.masked_sum(token_logps, mask, dim=-1)  # (2B,): chosen first
        ul = losses.unlikelihood_loss(token_logps[:B], mask[:B], token_logps[B:], mask[B:], alpha=0.5)
        by_text = {}
        for rec, c, r in zip(train_records, seq[:B].tolist(), seq[B:].tolist()):
            by_text.setdefault(rec["chosen"], []).append(c)
            by_text.setdefault(rec["rejected"], []).append(r)
        mean = {k: sum(v) / len(v) for k, v in by_text.items()}
        return float(seq[:B].mean()), float(ul.mean()), mean[" good"] - mean[" so bad"]

    chosen0, ul0, gap0 = measure(initial_dir)
    chosen1, ul1, gap1 = measure(trained_dir)
    if loss == "preferred_ft":
        assert chosen1 > chosen0 + 0.05, (chosen0, chosen1)  # measured +0.17 (one LoRA step)
    else:
        assert ul1 < ul0 - 0.1, (ul0, ul1)  # measured -0.55
        assert gap1 > gap0 + 0.1, (gap0, gap1)  # measured +0.53


def count_good(prompts: list[str], responses: list[str]) -> list[float]:
    """Judge for the online test: how often a response says 'good', with length as a tie-breaker."""
    return [r.count("good") + 0.01 * len(r) for r in responses]


def run_online_two_rounds(model_dir, tmp_path):
    """Two online rounds on the SUBJECTS prompts, a quarter held out; returns the run directory."""
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"{s} was"} for s in SUBJECTS])
    out = tmp_path / "online"
    args = ["dpo", "--online", "--rounds", "2", "--prompts", str(prompts), "--judge", f"{__name__}:count_good",
            "--model.name", str(model_dir), "--samples-per-prompt", "3", "--max-new-tokens", "6",
            "--train.max-steps", "1", "--train.batch-size", "4", "--train.progress", "False",
            "--data.eval-fraction", "0.25", "--kl-prompts", "2", "--kl-samples", "1", "--out", str(out)]
    assert cli.main(args) == 0
    return out


def test_online_dpo_two_rounds_keeps_each_round(model_dir, tmp_path):
    out = run_online_two_rounds(model_dir, tmp_path)
    for i in (1, 2):
        cands = [json.loads(x) for x in (out / f"round-{i}" / "candidates.jsonl").read_text().splitlines()]
        prefs = [json.loads(x) for x in (out / f"round-{i}" / "preferences.jsonl").read_text().splitlines()]
        assert len(cands) == 6 and all(c["policy"] == f"round-{i}" for c in cands)
        assert prefs and all(count_good([""], [p["chosen"]]) > count_good([""], [p["rejected"]]) for p in prefs)
        assert (out / f"round-{i}" / "model" / "config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rounds"]) == 2 and (out / "model" / "config.json").exists()


def test_online_dpo_never_trains_on_a_held_out_prompt(model_dir, tmp_path):
    """The prompts are split once, before any round: every round's training pairs come from train prompts
    only and its held-out pairs from held-out prompts only."""
    out = run_online_two_rounds(model_dir, tmp_path)

    def prompts_in(path):
        return {json.loads(x)["prompt"] for x in path.read_text().splitlines()}

    held = prompts_in(out / "heldout_prompts.jsonl")
    assert len(held) == 2 and held < {f"{s} was" for s in SUBJECTS}
    summary = json.loads((out / "summary.json").read_text())
    for i, round_summary in zip((1, 2), summary["rounds"]):
        round_dir = out / f"round-{i}"
        assert not prompts_in(round_dir / "preferences.jsonl") & held  # what the round trained on
        assert prompts_in(round_dir / "candidates.jsonl") == {f"{s} was" for s in SUBJECTS} - held
        assert prompts_in(round_dir / "eval_candidates.jsonl") == held
        assert prompts_in(round_dir / "eval_preferences.jsonl") <= held
        assert round_summary["split"]["shared_prompts"] == 0
        assert round_summary["eval_pairs"] == len((round_dir / "eval_preferences.jsonl").read_text().splitlines())


def test_offline_held_out_pairs_share_no_prompt_with_training_pairs(tmp_path, capsys):
    """All C(4, 2) pairs of 4 completions per prompt, and rankings of 3: split by prompt before the rankings
    expand, so each held-out prompt's pairs are all held out."""
    import itertools

    from rlhfkit.dpo import load_pair_records

    pairs = [{"prompt": f"p{p}", "chosen": f" good {i}", "rejected": f" bad {j}"}
             for p in range(20) for i, j in itertools.combinations(range(4), 2)]
    random.Random(0).shuffle(pairs)
    rankings = [{"prompt": f"p{p}", "responses": [" a", " b", " c"], "ranking": [2, 0, 1]} for p in range(20)] * 2
    for name, records, per_prompt in (("pairs", pairs, 6), ("rankings", rankings, 2 * 3)):
        write_jsonl(tmp_path / f"{name}.jsonl", records)
        for seed in (0, 1, 2):
            train, held = load_pair_records(DataConfig(train=str(tmp_path / f"{name}.jsonl"), eval_fraction=0.2), seed)
            held_prompts = {r["prompt"] for r in held}
            assert len(held_prompts) == 4 and not held_prompts & {r["prompt"] for r in train}
            assert len(held) == 4 * per_prompt and len(train) == 16 * per_prompt
    assert "warning" not in capsys.readouterr().err
    # a separate eval file whose prompts also occur in the training file is used as given, with a warning
    write_jsonl(tmp_path / "eval.jsonl", pairs[:5])
    train, held = load_pair_records(DataConfig(train=str(tmp_path / "rankings.jsonl"),
                                               eval=str(tmp_path / "eval.jsonl")), 0)
    assert held == pairs[:5] and len(train) == 40 * 3
    n = len({r["prompt"] for r in pairs[:5]})
    assert capsys.readouterr().err.strip() == (f"warning: {n} of the {n} prompts in {tmp_path / 'eval.jsonl'} also "
                                               f"occur in {tmp_path / 'rankings.jsonl'}: held-out metrics are partly "
                                               "on trained prompts")


def test_beta_for_kl_fits_the_runs_and_predicts_beta(tmp_path, capsys):
    runs = []
    for beta, kl in [(0.1, 10.0), (0.5, 2.0)]:  # KL = 1 / beta: slope -1, intercept 0
        d = tmp_path / f"b{beta}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"beta": beta, "kl": kl}))
        runs.append(str(d))
    assert beta_for_kl_main(["--target-kl", "4", "--runs", *runs]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fit"]["slope"] == pytest.approx(-1.0)
    assert result["fit"]["intercept"] == pytest.approx(0.0, abs=1e-9)
    assert result["beta"] == pytest.approx(0.25)
    assert result["extrapolated"] is False and "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("target", [20.0, 1.0])
def test_beta_for_a_kl_outside_the_runs_range_is_flagged_as_extrapolated(tmp_path, capsys, target):
    runs = []
    for beta, kl in [(0.1, 10.0), (0.2, 5.0), (0.5, 2.0)]:
        d = tmp_path / f"b{beta}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"beta": beta, "kl": kl}))
        runs.append(str(d))
    assert beta_for_kl_main(["--target-kl", str(target), "--runs", *runs]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["extrapolated"] is True and result["beta"] == pytest.approx(1 / target)
    assert captured.err.strip() == (f"warning: target KL {target:g} is outside the fitted runs' KL range [2, 10]: "
                                    "the beta is extrapolated")
