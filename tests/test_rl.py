"""rlhfkit.rl against numbers worked out by hand (see the comment beside each literal)."""

import math

import pytest
import torch

from rlhfkit import rl

# ---------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_are_zero_when_policy_equals_reference(estimator):
    logprobs = torch.tensor([[-0.1, -3.0, -7.5]])
    assert torch.equal(rl.kl_penalty(logprobs, logprobs.clone(), estimator), torch.zeros(1, 3))


def test_kl_estimators_hand_values():
    logprobs, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert rl.kl_penalty(logprobs, ref, "k1").item() == pytest.approx(1.0)  # -1 - -2
    assert rl.kl_penalty(logprobs, ref, "k2").item() == pytest.approx(0.5)  # 0.5 * 1^2
    # (e^{-1} - 1) - (-1) = e^{-1}
    assert rl.kl_penalty(logprobs, ref, "k3").item() == pytest.approx(math.exp(-1.0))


def test_kl_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="k4"):
        rl.kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    # KL(p || q) = .5 log(.5/.2) + .3 log 1 + .2 log(.2/.5) = 0.458145 - 0.183258
    exact = 0.274887
    gen = torch.Generator().manual_seed(0)
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)  # tokens drawn from the policy
    logprobs, ref = p.log()[samples][None], q.log()[samples][None]  # (1, N)
    assert rl.kl_penalty(logprobs, ref, "k1").mean().item() == pytest.approx(exact, abs=0.01)
    assert rl.kl_penalty(logprobs, ref, "k3").mean().item() == pytest.approx(exact, abs=0.01)
    assert (rl.kl_penalty(logprobs, ref, "k3") >= 0).all()  # k3 is never negative, unlike k1


# ---------------------------------------------------------------- reward shaping


def test_shape_rewards_puts_the_score_on_the_last_real_token():
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    logprobs = torch.randn(4, 4)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rewards = rl.shape_rewards(scores, logprobs, logprobs.clone(), mask, kl_coef=0.3)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 4.0]])
    assert torch.equal(rewards, expected)


def test_shape_rewards_kl_part_is_minus_coef_times_kl_on_masked_tokens():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.5, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    rewards = rl.shape_rewards(torch.tensor([10.0]), logprobs, ref, mask, kl_coef=0.5)
    # -0.5 * (-1 - -2) = -0.5; last real token: -0.5 * 0.5 + 10; padding stays 0
    assert rewards[0].tolist() == pytest.approx([-0.5, 9.75, 0.0])
    rewards_k2 = rl.shape_rewards(torch.tensor([0.0]), logprobs, ref, mask, kl_coef=0.5, estimator="k2")
    # -0.5 * 0.5 * 1^2, -0.5 * 0.5 * 0.5^2
    assert rewards_k2[0].tolist() == pytest.approx([-0.25, -0.0625, 0.0])


# ---------------------------------------------------------------- GAE


def test_gae_hand_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = rl.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # delta = [0, 0, 0.5]; A_2 = 0.5, A_1 = 0.95 * 0.5, A_0 = 0.95 * 0.475
    assert advantages[0].tolist() == pytest.approx([0.45125, 0.475, 0.5])
    assert returns[0].tolist() == pytest.approx([0.95125, 0.975, 1.0])


def test_gae_padded_row_ignores_values_and_rewards_after_the_end():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = rl.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert advantages[0].tolist() == pytest.approx([0.45125, 0.475, 0.5])
    # row 1 ends at token 1: delta_1 = 1 + 0 - 0.5 = 0.5, delta_0 = 0 + 0.5 - 0.5 = 0 -> A_0 = 0.95 * 0.5
    assert advantages[1].tolist() == pytest.approx([0.475, 0.5, 0.0])
    assert returns[1].tolist() == pytest.approx([0.975, 1.0, 0.0])


def test_gae_with_discount_hand_value():
    rewards = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[1.0, 1.0]])
    advantages, _ = rl.gae(rewards, values, torch.ones(1, 2), gamma=0.9, lam=0.5)
    # delta_1 = 2 - 1 = 1; delta_0 = 1 + 0.9 * 1 - 1 = 0.9; A_0 = 0.9 + 0.9 * 0.5 * 1 = 1.35
    assert advantages[0].tolist() == pytest.approx([1.35, 1.0])


# ---------------------------------------------------------------- group baselines


def test_rloo_advantages_subtract_the_mean_of_the_others():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert rl.rloo_advantages(scores, group_size=2).tolist() == pytest.approx([-1.0, 1.0, -3.0, 3.0])
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    # group [1, 2, 6]: 1 - 4, 2 - 3.5, 6 - 1.5 ; group [0, 0, 3]: 0 - 1.5, 0 - 1.5, 3 - 0
    assert rl.rloo_advantages(scores, group_size=3).tolist() == pytest.approx([-3, -1.5, 4.5, -1.5, -1.5, 3])


def test_group_advantages_refuse_bad_group_sizes():
    with pytest.raises(ValueError, match="group_size"):
        rl.rloo_advantages(torch.zeros(4), group_size=1)
    with pytest.raises(ValueError, match="group_size"):
        rl.grpo_advantages(torch.zeros(5), group_size=2)


def test_grpo_advantages_normalise_within_each_group():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    # group 1: mean 2, sample std 1 -> [-1, 0, 1]; group 2: all equal -> 0, not NaN
    advantages = rl.grpo_advantages(scores, group_size=3)
    assert advantages.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], abs=1e-5)


# ---------------------------------------------------------------- KL controllers


def test_fixed_kl_controller_never_moves():
    ctl = rl.FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05
    other = rl.FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_hand_values():
    ctl = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=256)
    # error = clip(12/6 - 1, -.2, .2) = 0.2 ; 0.2 * (1 + 0.2 * 256/10000)
    assert ctl.value == pytest.approx(0.201024)
    ctl = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=6.3, n_steps=256)
    # error = 6.3/6 - 1 = 0.05 (inside the clip) ; 0.2 * (1 + 0.05 * 0.0256)
    assert ctl.value == pytest.approx(0.200256)
    ctl.update(current_kl=0.0, n_steps=10000)
    # error = -1 clipped to -0.2 ; 0.200256 * 0.8
    assert ctl.value == pytest.approx(0.1602048)


def test_adaptive_kl_controller_state_round_trip():
    ctl = rl.AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(12.0, 256)
    restored = rl.AdaptiveKLController(0.2, 6.0, 10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    restored.update(12.0, 256)
    ctl.update(12.0, 256)
    assert restored.value == ctl.value


@pytest.mark.parametrize("init_kl_coef", [0.5, 0.01])
def test_adaptive_kl_controller_drives_kl_to_target(init_kl_coef):
    # A toy policy whose KL falls as the penalty rises: KL = 0.6 / beta, so the target 6 needs beta = 0.1.
    ctl = rl.AdaptiveKLController(init_kl_coef=init_kl_coef, target=6.0, horizon=1000)
    for _ in range(300):
        ctl.update(current_kl=0.6 / ctl.value, n_steps=256)
    assert 0.6 / ctl.value == pytest.approx(6.0, rel=0.02)


# ---------------------------------------------------------------- diagnostics


def test_explained_variance_hand_values():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert rl.explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert rl.explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0, abs=1e-6)
    # R - V = [0, 0, -1]: var 1/3 (unbiased); var R = 1 -> 1 - 1/3
    values = torch.tensor([[1.0, 2.0, 4.0, -50.0]])
    assert rl.explained_variance(values, returns, mask) == pytest.approx(2 / 3)
    assert isinstance(rl.explained_variance(values, returns, mask), float)
