import math

import torch

from rlhfkit.evaluate import SamplingConfig, best_of_n_kl, evaluate_policy, verdict_win_rate
from rlhfkit.labeling.auto import Labeler


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
    verdicts = Labeler("length", scorer=length_scorer).compare(["p"] * 4, ["aaa", "a", "aa", "aaaa"],
                                                               ["a", "aa", "aa", "a"])
    wr, extra = verdict_win_rate(verdicts)
    assert (wr.wins, wr.losses, wr.ties) == (2, 1, 1) and wr.rate == 0.625
    assert extra["unparseable"] == 0 and extra["order_inconsistent"] == 0 and extra["mean_prob_a"] is None


def test_reward_kl_reports_95_percent_intervals_not_only_standard_errors(tiny_tokenizer, tiny_model):
    from rlhfkit import stats

    prompts = ["the movie", "a bad plot", "i loved", "what a"]
    ev = evaluate_policy(tiny_model, tiny_model, tiny_tokenizer, prompts, length_scorer,
                         SamplingConfig(max_new_tokens=6, samples_per_prompt=2), seed=1)
    out = ev.to_dict()
    assert list(out) == ["reward", "reward_se", "reward_ci95", "kl", "kl_se", "kl_ci95", "length", "n"]
    assert {k: out[k] for k in ev.summary()} == ev.summary()  # the experiment's entries keep their keys
    expected = stats.mean_ci(ev.prompt_rewards)
    assert out["reward_ci95"] == [expected.low, expected.high] and out["n"] == 4
    assert math.isclose(expected.high - expected.mean, 1.959964 * expected.se, rel_tol=1e-6)
    assert out["reward_ci95"][0] < out["reward"] < out["reward_ci95"][1]  # lengths differ: a real interval
    line = ev.describe()
    assert f"reward {out['reward']:.3f} [{out['reward_ci95'][0]:.3f}, {out['reward_ci95'][1]:.3f}]" in line
    assert "95% intervals over 4 prompts" in line


def test_win_rate_reports_ties_and_the_wilson_interval():
    from rlhfkit import stats
    from rlhfkit.evaluate import describe_win_rate, win_rate_dict

    wr = stats.win_rate([3, 1, 2, 4, 5, 5], [1, 2, 2, 1, 1, 5])
    out = win_rate_dict(wr)
    assert (out["wins"], out["losses"], out["ties"], out["n"]) == (3, 1, 2, 6) and out["rate"] == 4 / 6
    assert out["rate_ci95"] == list(stats.wilson_interval(4 / 6, 6)) == [out["low"], out["high"]]
    low, high = out["rate_ci95"]
    assert describe_win_rate(wr) == (f"A beats B on 3 of 6 prompts, loses 1, ties 2; win rate 0.667 [{low:.3f}, "
                                     f"{high:.3f}] (ties count half; 95% Wilson interval)")


def test_eval_commands_print_intervals(tmp_path, tiny_tokenizer, tiny_model, capsys):
    import json

    from rlhfkit.data import write_jsonl
    from rlhfkit.evaluate import reward_kl_main, win_rate_main
    from rlhfkit.models import save_model

    model_dir = str(save_model(tiny_model, tiny_tokenizer, tmp_path / "m"))
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in ("the movie", "a bad plot", "i loved")])
    common = ["--prompts", str(tmp_path / "p.jsonl"), "--judge", f"{__name__}:length_scorer",
              "--sampling.max-new-tokens", "5"]
    assert reward_kl_main(["--policy", model_dir, "--reference", model_dir, *common,
                           "--out", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads((tmp_path / "r.json").read_text())
    low, high = printed["reward_ci95"]
    assert low <= printed["reward"] <= high and len(printed["kl_ci95"]) == 2
    assert "reward-kl: reward" in captured.err and "95% intervals over 3 prompts" in captured.err
    assert win_rate_main(["--a", model_dir, "--b", model_dir, *common]) == 0
    captured = capsys.readouterr()
    wr = json.loads(captured.out)
    assert wr["ties"] == 3 and wr["rate"] == 0.5 and wr["rate_ci95"][0] < 0.5 < wr["rate_ci95"][1]
    assert "win-rate: A beats B on 0 of 3 prompts, loses 0, ties 3; win rate 0.500 [" in captured.err
