import math

import torch

from rlhfkit.evaluate import SamplingConfig, best_of_n_kl, evaluate_policy, judge_win_rate


def length_scorer(prompts, responses):
    return [float(len(r)) for r in responses]


def test_kl_is_zero_against_itself_and_positive_against_another_model(tiny_tokenizer, tiny_model, tiny_arch):
    from rlhfkit.models import build_tiny

    prompts = ["the movie", "a bad plot", "i loved"]
    cfg = SamplingConfig(max_new_tokens=6, samples_per_prompt=4)
    same = evaluate_policy(tiny_model, tiny_model, tiny_tokenizer, prompts, length_scorer, cfg, seed=1)
    assert same.kl.mean == 0.0 and same.kl.se == 0.0 and same.reward.n == 3  # clustered: n counts prompts
    assert len(same.completions) == 12 and same.length > 0
    other = build_tiny(tiny_tokenizer, tiny_arch, seed=1)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3.0)
    diff = evaluate_policy(tiny_model, other, tiny_tokenizer, prompts, length_scorer, cfg, seed=1)
    assert diff.kl.mean > 0 and math.isfinite(diff.kl.se)
    assert diff.completions == same.completions  # same policy, same seed: same samples


def test_best_of_n_kl_and_win_rate():
    assert best_of_n_kl(1) == 0.0
    assert math.isclose(best_of_n_kl(4), math.log(4) - 0.75)
    wr = judge_win_rate(["p"] * 4, ["aaa", "a", "aa", "aaaa"], ["a", "aa", "aa", "a"], length_scorer)
    assert (wr.wins, wr.losses, wr.ties) == (2, 1, 1) and wr.rate == 0.625
