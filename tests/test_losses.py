"""rlhfkit.losses against numbers worked out by hand (see the comment beside each literal)."""

import math

import pytest
import torch

from rlhfkit import losses


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- SFT


def test_sft_loss_sums_only_masked_tokens_per_example():
    token_logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.1, 0.1]]))
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    nll_sum, n_tokens = losses.sft_loss(token_logps, mask)
    # row 0: -log .25 - log .9 = 1.386294 + 0.105361; row 1: -log .5
    assert nll_sum.tolist() == pytest.approx([1.491655, 0.693147], abs=1e-5)
    assert n_tokens.tolist() == [2.0, 1.0]
    # token-weighted batch loss: (1.491655 + 0.693147) / 3
    assert (nll_sum.sum() / n_tokens.sum()).item() == pytest.approx(0.728267, abs=1e-5)


def test_sft_loss_padding_values_never_matter():
    mask = torch.tensor([[1, 1, 0]])
    a, _ = losses.sft_loss(torch.tensor([[-1.0, -2.0, -3.0]]), mask)
    b, _ = losses.sft_loss(torch.tensor([[-1.0, -2.0, -1e9]]), mask)
    assert a.item() == b.item() == 3.0


# ---------------------------------------------------------------- reward model


def test_bradley_terry_hand_value():
    # -log sigma(2 - 0.5) = log(1 + e^-1.5)
    assert losses.bradley_terry_loss(t(2.0), t(0.5)).item() == pytest.approx(0.20141, abs=1e-5)


def test_bradley_terry_margin_is_subtracted_from_the_gap():
    with_margin = losses.bradley_terry_loss(t(3.0), t(0.5), margin=t(1.0))
    assert with_margin.item() == pytest.approx(0.20141, abs=1e-5)


def test_bradley_terry_finite_for_huge_gaps():
    chosen = torch.tensor([1e4, -1e4], requires_grad=True)
    loss = losses.bradley_terry_loss(chosen, torch.zeros(2))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(chosen.grad).all()
    assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(1e4)
    assert chosen.grad.tolist() == [0.0, -1.0]


def test_plackett_luce_k2_equals_bradley_terry():
    rewards = torch.tensor([[2.0, 0.5], [-1.0, 3.0], [0.0, 0.0]])
    bt = losses.bradley_terry_loss(rewards[:, 0], rewards[:, 1])
    assert torch.allclose(losses.plackett_luce_loss(rewards), bt, atol=1e-6)


def test_plackett_luce_k3_hand_value():
    # -[2 - log(e^2 + e^1 + e^0)] - [1 - log(e^1 + e^0)] - [0 - log e^0]
    # = 0.407606 + 0.313262 + 0
    loss = losses.plackett_luce_loss(torch.tensor([[2.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.720868, abs=1e-5)


def test_plackett_luce_mask_drops_the_tail_of_short_rankings():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.5, 123.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss = losses.plackett_luce_loss(rewards, mask)
    assert loss[0].item() == pytest.approx(0.720868, abs=1e-5)
    assert loss[1].item() == pytest.approx(0.20141, abs=1e-5)  # a ranking of 2 is Bradley-Terry
    loss.sum().backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2].item() == 0.0


def _plackett_luce_without_ties(rewards, mask):
    """The Plackett-Luce loss as it was before ties: a cumulative logsumexp from the worst response up."""
    filled = torch.where(mask, rewards, torch.finfo(rewards.dtype).min)
    tail_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    return -torch.where(mask, filled - tail_lse, torch.zeros_like(filled)).sum(-1)


def test_plackett_luce_breslow_tie_hand_value():
    # rewards [2, 1, 1, 0], ranks [0, 1, 1, 2]: the two tied responses share the denominator of rank >= 1
    #   best:   -[2 - log(e^2 + e + e + 1)] = log(13.825620) - 2 = 2.626523 - 2 = 0.626523
    #   tied:   -[1 - log(e + e + 1)]       = log(6.436564) - 1  = 1.861995 - 1 = 0.861995, twice
    #   worst:  -[0 - log e^0]              = 0
    # total 0.626523 + 2 * 0.861995 = 2.350513
    loss = losses.plackett_luce_loss(t(2.0, 1.0, 1.0, 0.0)[None], ranks=torch.tensor([[0, 1, 1, 2]]))
    assert loss.item() == pytest.approx(2.350513, abs=1e-5)


def test_plackett_luce_breslow_tied_last_group_keeps_a_term():
    # rewards [1, 0, 0], ranks [0, 1, 1]: best -[1 - log(e + 2)] = 1.551445 - 1 = 0.551445; each tied
    # response -[0 - log(1 + 1)] = log 2: total 0.551445 + 2 * 0.693147 = 1.937739 (a tie of d costs >= d log d)
    loss = losses.plackett_luce_loss(t(1.0, 0.0, 0.0)[None], ranks=torch.tensor([[0, 1, 1]]))
    assert loss.item() == pytest.approx(1.937739, abs=1e-5)


def test_plackett_luce_without_ties_equals_the_old_loss():
    torch.manual_seed(0)
    rewards = torch.randn(16, 5) * 3
    mask = torch.ones(16, 5, dtype=torch.bool)
    mask[4:, 3:] = False  # shorter rankings occupy a prefix of the row
    mask[9:, 2:] = False
    old = _plackett_luce_without_ties(rewards, mask)
    ranks = torch.arange(5).expand(16, 5)
    torch.testing.assert_close(losses.plackett_luce_loss(rewards, mask), old, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(losses.plackett_luce_loss(rewards, mask, ranks), old, atol=1e-5, rtol=1e-6)
    # ranks 0, 2, 5, ... with gaps order the same way: only the order of the ranks matters
    torch.testing.assert_close(losses.plackett_luce_loss(rewards, mask, ranks * 3 + 1), old, atol=1e-5, rtol=1e-6)


def test_plackett_luce_with_ranks_does_not_depend_on_column_order():
    rewards, ranks = t(0.0, 1.0, 2.0, 1.0)[None], torch.tensor([[2, 1, 0, 1]])  # the 2.350513 table, shuffled
    assert losses.plackett_luce_loss(rewards, ranks=ranks).item() == pytest.approx(2.350513, abs=1e-5)


def test_plackett_luce_ties_and_padding_give_finite_gradients():
    rewards = torch.tensor([[2.0, 1.0, 1.0, 0.0], [3.0, 3.0, -50.0, 99.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    ranks = torch.tensor([[0, 1, 1, 2], [0, 0, 1, 0]])  # the padded cell's rank is ignored
    loss = losses.plackett_luce_loss(rewards, mask, ranks)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 3].item() == 0.0
    # row 1: the tied pair [3, 3] above -50: each term -[3 - log(2 e^3 + e^-50)] ~ log 2, the last 0
    assert loss[1].item() == pytest.approx(2 * math.log(2), abs=1e-6)


# ---------------------------------------------------------------- DPO family


def test_dpo_hand_value_and_rewards():
    # logits = 0.1 * (1.0 - 0) -> -log sigma(0.1) = 0.644397
    loss, chosen_r, rejected_r = losses.dpo_loss(t(-1.0), t(-2.0), t(-3.0), t(-3.0), beta=0.1)
    assert loss.item() == pytest.approx(0.64440, abs=1e-5)
    assert chosen_r.item() == pytest.approx(0.2)  # 0.1 * (-1 - -3)
    assert rejected_r.item() == pytest.approx(0.1)  # 0.1 * (-2 - -3)
    assert not chosen_r.requires_grad


def test_dpo_at_reference_is_log2_with_zero_rewards():
    logps = t(-4.0, -7.5)
    loss, chosen_r, rejected_r = losses.dpo_loss(logps, t(-2.0, -9.0), logps, t(-2.0, -9.0), beta=0.5)
    assert torch.allclose(loss, torch.full((2,), math.log(2.0)))
    assert chosen_r.tolist() == [0.0, 0.0] and rejected_r.tolist() == [0.0, 0.0]


def test_dpo_gradient_weight_is_sigmoid_of_reversed_implicit_rewards():
    beta = 0.3
    policy_chosen = torch.tensor([-1.0, -5.0, -2.0], requires_grad=True)
    policy_rejected = t(-2.0, -1.0, -2.5)
    ref_chosen, ref_rejected = t(-1.5, -4.0, -2.0), t(-1.0, -1.5, -3.0)
    loss, chosen_r, rejected_r = losses.dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta
    )
    loss.sum().backward()
    # DPO paper eq. 7: d loss / d log pi(y_w) = -beta * sigma(r_hat_l - r_hat_w)
    expected = -beta * torch.sigmoid(rejected_r - chosen_r)
    assert torch.allclose(policy_chosen.grad, expected, atol=1e-6)


def test_conservative_dpo_label_smoothing_hand_value():
    # 0.9 * log(1 + e^-0.1) + 0.1 * log(1 + e^0.1) = 0.9 * 0.644397 + 0.1 * 0.744397
    loss, _, _ = losses.dpo_loss(t(-1.0), t(-2.0), t(-3.0), t(-3.0), beta=0.1, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.654397, abs=1e-5)


def test_ipo_hand_values():
    # h = (-1 - -3) - (-2 - -3) = 1; 1 / (2 * 0.1) = 5; (1 - 5)^2 = 16
    loss, chosen_r, rejected_r = losses.ipo_loss(t(-1.0), t(-2.0), t(-3.0), t(-3.0), tau=0.1)
    assert loss.item() == pytest.approx(16.0)
    assert chosen_r.item() == pytest.approx(0.2) and rejected_r.item() == pytest.approx(0.1)
    # h = 5 hits the target margin exactly: zero loss
    loss, _, _ = losses.ipo_loss(t(0.0), t(-5.0), t(0.0), t(0.0), tau=0.1)
    assert loss.item() == pytest.approx(0.0)
    # h = 6 overshoots: IPO penalises it too, (6 - 5)^2
    loss, _, _ = losses.ipo_loss(t(0.0), t(-6.0), t(0.0), t(0.0), tau=0.1)
    assert loss.item() == pytest.approx(1.0)


def test_preferred_ft_is_mean_nll_over_chosen_tokens():
    token_logps = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.5, 0.5, 0.5]]))
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    loss = losses.preferred_ft_loss(token_logps, mask)
    # row 0: (log 2 + log 4) / 2; row 1: log 2
    assert loss.tolist() == pytest.approx([1.039721, 0.693147], abs=1e-5)


def test_unlikelihood_hand_value():
    chosen = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    rejected = torch.log(torch.tensor([[0.5, 0.9, 0.99]]))
    mask = torch.tensor([[1, 1, 0]])
    # (log 2 + log 4) / 2 - [log(1 - .5) + log(1 - .9)] / 2 = 1.039721 + 1.497866
    loss = losses.unlikelihood_loss(chosen, mask, rejected, mask, alpha=1.0)
    assert loss.item() == pytest.approx(2.537587, abs=1e-5)
    # alpha scales only the rejected term: 1.039721 + 0.5 * 1.497866
    half = losses.unlikelihood_loss(chosen, mask, rejected, mask, alpha=0.5)
    assert half.item() == pytest.approx(1.788654, abs=1e-5)


def test_unlikelihood_is_finite_when_rejected_token_is_certain():
    rejected = torch.tensor([[0.0, -1e-12]], requires_grad=True)
    loss = losses.unlikelihood_loss(torch.zeros(1, 2), torch.ones(1, 2), rejected, torch.ones(1, 2))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(rejected.grad).all()


# ---------------------------------------------------------------- PPO


def test_ppo_policy_loss_clip_hand_values_and_metrics():
    old = torch.zeros(1, 3)
    logprobs = torch.log(torch.tensor([[1.5, 1.5, 7.0]]))  # ratio 1.5; the third token is padding
    advantages = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    per_token, metrics = losses.ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (unclipped)
    assert per_token[0].tolist() == pytest.approx([-1.2, 1.5, 0.0], abs=1e-6)
    assert metrics["ppo/clipfrac"].item() == pytest.approx(0.5)
    # 0.5 * log(1.5)^2 = 0.5 * 0.405465^2
    assert metrics["ppo/approx_kl"].item() == pytest.approx(0.082201, abs=1e-5)
    assert metrics["ppo/ratio_mean"].item() == pytest.approx(1.5)
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_ppo_policy_gradient_is_zero_on_clipped_tokens():
    logprobs = torch.log(torch.tensor([[1.5, 1.5]])).requires_grad_()
    per_token, _ = losses.ppo_policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    )
    per_token.sum().backward()
    # clipped token: no gradient; unclipped A=-1 token: d(-A * ratio)/d logp = ratio = 1.5
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, 1.5])


def test_ppo_ratio_is_one_and_loss_is_minus_advantage_on_policy():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    advantages = torch.tensor([[0.3, -2.0, 1.0]])
    per_token, metrics = losses.ppo_policy_loss(logprobs, logprobs.clone(), advantages, torch.ones(1, 3))
    assert torch.equal(per_token, -advantages)
    assert metrics["ppo/clipfrac"].item() == 0.0 and metrics["ppo/approx_kl"].item() == 0.0
    assert metrics["ppo/ratio_mean"].item() == 1.0


def test_ppo_value_loss_hand_values():
    old = torch.zeros(1, 4)
    values = torch.tensor([[1.0, 0.1, -1.0, 50.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    per_token, metrics = losses.ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # token 0: max(0, (0.2 - 1)^2) / 2 = 0.32 (clip active)
    # token 1: v inside the band: 0.9^2 / 2 = 0.405
    # token 2: max((-1 - 1)^2, (-0.2 - 1)^2) / 2 = 4 / 2 (unclipped is worse)
    assert per_token[0].tolist() == pytest.approx([0.32, 0.405, 2.0, 0.0], abs=1e-6)
    assert metrics["ppo/vf_clipfrac"].item() == pytest.approx(1 / 3)
    assert not metrics["ppo/vf_clipfrac"].requires_grad
