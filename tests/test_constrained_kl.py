"""KL(pi || pi_ref) under sampling constraints: one definition of the sampled distribution (constrain_logits),
used by the sampler, evaluation and PPO alike; clustered standard errors; clear errors on bad settings."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhfkit import ppo, stats
from rlhfkit.data import encode_prompt
from rlhfkit.errors import RlhfkitError
from rlhfkit.evaluate import SamplingConfig, evaluate_policy, prompt_means
from rlhfkit.generation import (check_sampling, constrain_logits, response_logprobs, response_token_logprobs, sample,
                                sequence_logprob_sums)

NEG = float("-inf")


def length_scorer(prompts, responses):
    return [float(len(r)) for r in responses]


def eos_boosted(model, eos_id: int, boost: float = 6.0):
    """A copy of `model` whose EOS logit is `boost` higher everywhere: with EOS forbidden it samples exactly
    like `model`, so the true KL between their constrained distributions is 0."""
    policy = copy.deepcopy(model)

    def hook(module, inputs, output):
        output.logits[..., eos_id] += boost
        return output

    policy.register_forward_hook(hook)
    return policy


# ------------------------------------------------------------------------------------------ constrain_logits
def test_constrain_logits_by_hand():
    """V = 4, EOS = 3, temperature 2: [2, 0, 1, 4] -> [1, 0, 0.5, 2].
    step 0 < min_new_tokens: EOS -> -inf; probs of [1, 0, 0.5] are .507, .186, .307; top_p .6 keeps the
    smallest set reaching .6: token 0 (.507) then token 2 (mass before it .507 < .6); token 1 (mass before
    .814) is dropped. step 1: EOS allowed; probs .579 (EOS), .213 (0), .129 (2), .078 (1): EOS and token 0."""
    raw = torch.tensor([2.0, 0.0, 1.0, 4.0])
    kw = dict(temperature=2.0, top_p=0.6, min_new_tokens=1, eos_id=3)
    assert constrain_logits(raw, 0, **kw).tolist() == [1.0, NEG, 0.5, NEG]
    assert constrain_logits(raw, 1, **kw).tolist() == [1.0, NEG, NEG, 2.0]
    assert raw.tolist() == [2.0, 0.0, 1.0, 4.0]  # pure: the input is untouched
    # step as a tensor over a whole response: (B, A, V) logits with (A,) steps
    both = constrain_logits(raw.expand(2, 2, 4), torch.arange(2), **kw)  # (2, 2, 4)
    assert both[:, 0].tolist() == [[1.0, NEG, 0.5, NEG]] * 2 and both[:, 1].tolist() == [[1.0, NEG, NEG, 2.0]] * 2
    # renormalised: log p(token 0 | step 0) = log(e^1 / (e^1 + e^0.5))
    logp = constrain_logits(raw, 0, **kw).log_softmax(-1)[0]
    assert math.isclose(float(logp), -math.log1p(math.exp(-0.5)), rel_tol=1e-6)
    # each constraint alone
    assert constrain_logits(raw, 0, temperature=2.0).tolist() == [1.0, 0.0, 0.5, 2.0]
    assert constrain_logits(raw, 0, min_new_tokens=1, eos_id=3).tolist() == [2.0, 0.0, 1.0, NEG]
    assert constrain_logits(raw, 5, min_new_tokens=1, eos_id=3).tolist() == [2.0, 0.0, 1.0, 4.0]
    assert constrain_logits(raw, 0, temperature=0.0).tolist() == [2.0, 0.0, 1.0, 4.0]  # greedy: unscaled


# ------------------------------------------------------------------ exact KL of a 2-step toy, by enumeration
V, EOS, T = 4, 0, 0.7
# step-0 logits (V,), and step-1 logits given the first token y0 (row y0); token 3 is very unlikely, so top_p
# 0.9 cuts exactly it (tokens 0-2 stay within 1 nat of each other: no two of them reach 0.9)
PI0, REF0 = torch.tensor([0.9, 0.2, 0.8, -6.0]), torch.tensor([0.1, 0.7, 0.3, -6.0])
PI1 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.6, 0.1, 0.9, -6.0], [0.2, 0.8, 0.5, -6.0], [0.5, 0.0, 0.4, -6.0]])
REF1 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.9, 0.2, -6.0], [0.7, 0.1, 0.6, -6.0], [0.0, 0.5, 0.9, -6.0]])


def _hand_probs(logits: torch.Tensor, allowed: list[int]) -> dict[int, float]:
    """softmax(logits / T) restricted to `allowed` and renormalised, in plain floats."""
    w = {t: math.exp(float(logits[t]) / T) for t in allowed}
    return {t: w[t] / sum(w.values()) for t in allowed}


def _exact_kl(first: list[int], second: list[int]) -> float:
    """KL over 2-token sequences (y0 in `first`, y1 in `second`) of the truncated, renormalised distributions."""
    p0, q0 = _hand_probs(PI0, first), _hand_probs(REF0, first)
    kl = 0.0
    for y0 in first:
        p1, q1 = _hand_probs(PI1[y0], second), _hand_probs(REF1[y0], second)
        for y1 in second:
            kl += p0[y0] * p1[y1] * math.log(p0[y0] * p1[y1] / (q0[y0] * q1[y1]))
    return kl


def _library_kl(first: list[int], second: list[int], **constraint) -> tuple[float, float]:
    """E_{y ~ pi}[sum_t log pi(y_t) - log pi_ref(y_t)] by enumeration with response_token_logprobs; also the
    total probability pi gives the enumerated sequences (1 when they are its support)."""
    seqs = [(y0, y1) for y0 in first for y1 in second]
    ids = torch.tensor([[1, y0, y1] for y0, y1 in seqs])  # (S, A + 1): a prompt token, then the response

    def logits(step0, step1):  # (S, A + 1, V): column t predicts response token t; the last one is unused
        return torch.stack([torch.stack([step0, step1[y0], torch.zeros(V)]) for y0, _ in seqs])

    lp_pi, _ = response_token_logprobs(logits(PI0, PI1), ids, eos_id=EOS, **constraint)  # (S, 2)
    lp_ref, _ = response_token_logprobs(logits(REF0, REF1), ids, eos_id=EOS, **constraint)  # (S, 2)
    p = lp_pi.sum(-1).double().exp()  # (S,)
    return float((p * (lp_pi - lp_ref).sum(-1).double()).sum()), float(p.sum())


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_constrained_logratios_give_the_exact_kl_of_the_sampled_distributions(top_p):
    """EOS forbidden at step 0 (min_new_tokens 1), temperature 0.7, and optionally top-p 0.9 (cuts token 3 in
    both models, so the KL stays finite): the support is y0 in {1, 2(, 3)}, y1 in {0, 1, 2(, 3)}."""
    first, second = ([1, 2, 3], [0, 1, 2, 3]) if top_p == 1.0 else ([1, 2], [0, 1, 2])
    exact = _exact_kl(first, second)
    kl, mass = _library_kl(first, second, temperature=T, top_p=top_p, min_new_tokens=1)
    assert math.isclose(mass, 1.0, abs_tol=1e-6)  # the enumerated sequences are the whole support
    assert math.isclose(kl, exact, abs_tol=1e-6) and exact > 0.05
    # scoring the same sequences without the constraint (temperature only) gets it wrong
    unconstrained, mass = _library_kl(first, second, temperature=T)
    assert mass < 0.999 and abs(unconstrained - exact) > 0.01


# ------------------------------------------------------- the EOS-forbidden case: true KL 0, naive about -10
def test_sampler_logprobs_are_the_constrained_teacher_forced_logprobs(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    kw = dict(temperature=0.7, top_p=0.8, min_new_tokens=4)
    r = sample(tiny_model, [encode_prompt(tok, "the movie"), encode_prompt(tok, "a")], tok.pad_token_id,
               tok.eos_token_id, num_samples=3, max_new_tokens=8, seed=3, **kw)
    mask = r.response_mask.bool()
    with torch.no_grad():
        forced = response_logprobs(tiny_model, r, eos_id=tok.eos_token_id, **kw)
    torch.testing.assert_close(forced[mask], r.logprobs[mask], atol=1e-4, rtol=0)
    assert torch.isfinite(forced).all() and (forced[~mask] == 0).all()


def test_forbidden_eos_costs_no_kl_in_evaluation(tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    policy = eos_boosted(tiny_model, eos)
    cfg = SamplingConfig(max_new_tokens=12, min_new_tokens=12, samples_per_prompt=4)
    ev = evaluate_policy(policy, tiny_model, tiny_tokenizer, ["the movie", "a bad plot", "i loved"], length_scorer,
                         cfg, seed=0)
    assert abs(ev.kl.mean) < 0.05 and ev.length == 12.0
    # the unconstrained log-probs (what evaluation used before) see the +6 as about -10 nats over 12 tokens
    r = sample(policy, [encode_prompt(tiny_tokenizer, "the movie")], tiny_tokenizer.pad_token_id, eos,
               num_samples=4, max_new_tokens=12, min_new_tokens=12)
    naive = sequence_logprob_sums(policy, r) - sequence_logprob_sums(tiny_model, r)  # (4,)
    assert float(naive.mean()) < -5


def test_forbidden_eos_costs_no_kl_in_ppo(tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    policy = eos_boosted(tiny_model, eos)
    module = ppo.PolicyWithValue(policy, value_head=True).eval()
    prompts = [encode_prompt(tiny_tokenizer, p) for p in ["the movie", "a bad plot was", "i"]]
    rollout = sample(policy, prompts, tiny_tokenizer.pad_token_id, eos, num_samples=2, max_new_tokens=12,
                     min_new_tokens=12, seed=1)
    chunks = [torch.tensor([0, 3, 5]), torch.tensor([1, 2, 4])]
    old, _, ent, _ = ppo.policy_logprobs(module, rollout, chunks, 1.0, "cpu", False, 12, eos)
    ref = ppo.reference_logprobs(module, tiny_model, rollout, chunks, 1.0, "cpu", 12, eos)
    mask = rollout.response_mask
    torch.testing.assert_close(old * mask, rollout.logprobs, atol=1e-4, rtol=0)  # the sampler's own log-probs
    seq_kl = ((old - ref) * mask).sum(-1)  # (N,) k1, what objective/kl averages
    assert seq_kl.abs().max() < 0.05 and torch.isfinite(ent).all()
    naive_old, _, _, _ = ppo.policy_logprobs(module, rollout, chunks, 1.0, "cpu")
    naive_ref = ppo.reference_logprobs(module, tiny_model, rollout, chunks, 1.0, "cpu")
    assert float(((naive_old - naive_ref) * mask).sum(-1).mean()) < -5


# ------------------------------------------------------------------------------------- clustered errors
def test_prompt_means_by_hand():
    assert prompt_means([1, 2, 3, 4, 5, 6], 2) == [1.5, 3.5, 5.5]
    assert prompt_means([1.0, 2.0], 1) == [1.0, 2.0]


def test_standard_errors_are_clustered_by_prompt(tiny_model, tiny_tokenizer, tiny_arch):
    from rlhfkit.models import build_tiny

    prompts = ["the movie", "a bad plot", "i loved", "the film was"]
    cfg = SamplingConfig(max_new_tokens=6, samples_per_prompt=3)
    ev = evaluate_policy(tiny_model, build_tiny(tiny_tokenizer, tiny_arch, seed=1), tiny_tokenizer, prompts,
                         length_scorer, cfg, seed=2)
    assert len(ev.scores) == 12 and len(ev.prompt_rewards) == len(ev.prompt_kls) == len(ev.prompt_lengths) == 4
    rewards = [sum(ev.scores[3 * i: 3 * i + 3]) / 3 for i in range(4)]
    assert ev.prompt_rewards == pytest.approx(rewards)
    assert ev.reward == stats.mean_ci(ev.prompt_rewards) and ev.kl == stats.mean_ci(ev.prompt_kls)
    assert ev.reward.n == 4 and ev.reward.se != stats.mean_ci(ev.scores).se  # clustered, not per sample
    assert sum(ev.prompt_lengths) / 4 == pytest.approx(ev.length)
    assert ev.summary()["n"] == 4 and set(ev.summary()) == {"reward", "reward_se", "kl", "kl_se", "length", "n"}


# ------------------------------------------------------------------------------------------ bad settings
def _one_line_error(match: str, fn, *args, **kwargs):
    with pytest.raises(RlhfkitError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("temperature, top_p, match", [(-0.5, 1.0, "temperature must be >= 0"),
                                                       (float("nan"), 1.0, "temperature must be >= 0"),
                                                       (1.0, 0.0, r"top_p must be in \(0, 1\]"),
                                                       (1.0, 1.5, r"top_p must be in \(0, 1\]")])
def test_bad_sampling_settings_fail_in_one_line_everywhere(tiny_model, tiny_tokenizer, temperature, top_p, match):
    from rlhfkit.bestofn import best_of_n

    tok = tiny_tokenizer
    _one_line_error(match, sample, tiny_model, [[5, 6]], tok.pad_token_id, tok.eos_token_id, max_new_tokens=2,
                    temperature=temperature, top_p=top_p)
    _one_line_error(match, best_of_n, tiny_model, tok, ["the"], length_scorer, 2, max_new_tokens=2,
                    temperature=temperature, top_p=top_p)
    _one_line_error(match, evaluate_policy, tiny_model, tiny_model, tok, ["the"], length_scorer,
                    SamplingConfig(max_new_tokens=2, temperature=temperature, top_p=top_p))
    _one_line_error(match, ppo.check_config, ppo.PPOConfig(prompts="p.jsonl", temperature=temperature, top_p=top_p))


@pytest.mark.parametrize("temperature, top_p, match", [(0.0, 1.0, "temperature 0 \\(greedy decoding\\)"),
                                                       (1.0, 0.9, "top_p 0.9 cannot be used where a KL")])
def test_greedy_and_top_p_are_refused_only_where_a_kl_is_measured(tiny_model, tiny_tokenizer, temperature, top_p,
                                                                   match):
    tok = tiny_tokenizer
    _one_line_error(match, evaluate_policy, tiny_model, tiny_model, tok, ["the"], length_scorer,
                    SamplingConfig(max_new_tokens=2, temperature=temperature, top_p=top_p))
    _one_line_error(match, ppo.check_config, ppo.PPOConfig(prompts="p.jsonl", temperature=temperature, top_p=top_p))
    check_sampling(temperature, top_p)  # plain sampling, best-of-N and win rates accept them
    r = sample(tiny_model, [[5, 6]], tok.pad_token_id, tok.eos_token_id, max_new_tokens=3, temperature=temperature,
               top_p=top_p)
    assert torch.isfinite(r.logprobs).all()


def test_cli_sampling_settings_are_checked_before_anything_is_loaded(tmp_path):
    from rlhfkit.evaluate import reward_kl_main, win_rate_main
    from rlhfkit.bestofn import sample_main

    missing = str(tmp_path / "no-such-model")  # neither the models nor the prompts exist: the check comes first
    common = ["--prompts", str(tmp_path / "no-such-prompts.jsonl")]
    _one_line_error("top_p 0.9 cannot be used where a KL", reward_kl_main,
                    ["--policy", missing, "--reference", missing, *common, "--sampling.top-p", "0.9"])
    _one_line_error("temperature 0 \\(greedy", reward_kl_main,
                    ["--policy", missing, "--reference", missing, *common, "--sampling.temperature", "0"])
    _one_line_error(r"top_p must be in \(0, 1\]", win_rate_main, ["--a", missing, "--b", missing, *common,
                                                                  "--sampling.top-p", "0"])
    _one_line_error("temperature must be >= 0", sample_main, ["--model", missing, *common, "--temperature", "-1"])
