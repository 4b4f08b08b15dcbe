"""rlhfkit.plots writes real PNGs; rlhfkit.report decides findings by its stated criteria and escapes text."""

import csv
import json

import pytest
from matplotlib.image import imread

from rlhfkit import findings, plots, report
from rlhfkit.stats import fit_beta_kl, win_rate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    height, width, _ = imread(path).shape
    return head == PNG_SIGNATURE and height > 100 and width > 100


def _ckpt(step, kl, reward, length=20.0):
    return {"step": step, "kl": kl, "kl_se": 0.1, "reward": reward, "reward_se": 0.02, "length": length}


def test_plots_write_nonempty_pngs(tmp_path):
    rows = [{"method": "dpo", "kl": 1.0, "reward": 0.3, "reward_se": 0.02, "kl_se": 0.1, "label": "β=0.5"},
            {"method": "dpo", "kl": 3.0, "reward": 0.6},
            {"method": "ppo", "kl": 2.0, "reward": 0.25, "reward_se": None}]
    path = plots.plot_frontier(rows, tmp_path / "sub" / "frontier.png", {"dpo": "DPO"}, {"dpo": (0.2, 0.1, 0.0, 3.0)})
    assert path == str(tmp_path / "sub" / "frontier.png") and _is_png(path)
    fit = fit_beta_kl([0.1, 0.5, 1.0], [30.0, 6.0, 3.0])
    assert _is_png(plots.plot_beta_kl([0.1, 0.5, 1.0], [30.0, 6.0, 3.0], fit, tmp_path / "beta.png"))
    bars = [{"method": "dpo", "rate": 0.7, "low": 0.4, "high": 0.9}, {"method": "ppo", "rate": 0.55}]
    assert _is_png(plots.plot_bars(bars, tmp_path / "bars.png", "rate", "win rate", reference=0.5))


DPO_RUN = {"method": "dpo", "label": "DPO β=0.1", "beta": 0.1, "checkpoints": [_ckpt(100, 1.0, 0.3), _ckpt(200, 3.0, 0.6)]}
PPO_RUN = {"method": "ppo", "label": "PPO", "checkpoints": [_ckpt(100, 2.0, 0.25), _ckpt(200, 4.0, 0.5)]}


def test_best_within_budget_and_beta_points():
    ckpts = [_ckpt(1, 0.5, 0.2), _ckpt(2, 1.0, 0.4), _ckpt(3, 0.8, 0.4), _ckpt(4, 5.0, 0.9)]
    assert report.best_within_budget(ckpts, 1.0)["step"] == 3  # equal reward: the lower KL wins
    assert report.best_within_budget(ckpts, 0.1) is None
    other = {"method": "dpo", "beta": 0.5, "checkpoints": [_ckpt(300, 0.9, 0.2), _ckpt(100, 0.4, 0.1)]}
    assert findings.beta_kl_points([DPO_RUN, PPO_RUN, other]) == ([0.1, 0.5], [3.0, 0.9])


def test_every_plot_gives_a_method_one_colour_and_marker():
    alone = plots.method_styles(["ppo"])
    mixed = plots.method_styles(["best_of_n", "dpo", "ppo", "custom"])
    assert alone["ppo"] == mixed["ppo"] and alone["dpo"] == mixed["dpo"]
    assert len({mixed[m] for m in ("sft", "dpo", "ppo", "ppo_gt", "preferred_ft", "unlikelihood", "best_of_n",
                                   "custom")}) == 8  # distinct pairs


def test_verdict_allows_only_three_outcomes():
    assert [findings.verdict(v) for v in (True, False, None)] == ["reproduced", "did not reproduce", "inconclusive"]
    with pytest.raises(ValueError, match="true, false or null"):
        findings.verdict("mostly")


EVIL = '<script>alert("x")</script> ![img](http://evil.example/a.png) [link](http://evil.example) | pipe'


def _results():
    methods = [
        {"method": "sft", "label": "SFT", "checkpoints": [_ckpt(0, 0.0, 0.19, 18.0)]},
        {**DPO_RUN, "win_rate_vs_sft": win_rate([1, 2, 3, 4, 5, 6, 0, 0, 7, 8], [0, 1, 2, 3, 4, 5, 1, 1, 7, 8]).to_dict()},
        {"method": "dpo", "label": "DPO β=0.5", "beta": 0.5, "checkpoints": [_ckpt(200, 1.2, 0.35, 25.0)]},
        {"method": "dpo", "label": "DPO β=1", "beta": 1.0, "checkpoints": [_ckpt(200, 0.6, 0.3)]},
        PPO_RUN,
    ]
    betas, kls = findings.beta_kl_points(methods)
    fit = fit_beta_kl(betas, kls)
    return {
        "title": "Sentiment <b>test</b>", "preset": "tiny", "budget": 2.0, "commands": ["rlhfkit experiment sentiment"],
        "stages": [{"name": "sft", "seconds": 12.5, "status": "done"}],
        "methods": methods,
        "reward_model": {"accuracy": 0.71, "n": 200, "calibration": [
            {"bin_low": 0.5, "bin_high": 0.6, "n": 80, "predicted": 0.55, "observed": 0.6}]},
        "samples": [{"prompt": "The movie was", "completions": {"DPO β=0.1": EVIL, "SFT": "fine.\nreally"}}],
        "beta_fit": fit,
        "findings": findings.sentiment_findings(methods, fit, n_boot=50),
        "extra": float("nan"),
    }


def test_write_report_writes_every_file_and_escapes_model_text(tmp_path):
    paths = report.write_report(tmp_path, _results())
    assert set(paths) == {"html", "markdown", "json", "csv", "frontier", "beta_kl", "win_rates"}
    for name in ("frontier", "beta_kl", "win_rates"):
        assert _is_png(paths[name])
    page = open(paths["html"], encoding="utf-8").read()
    assert "<script>" not in page and "&lt;script&gt;" in page and "Sentiment &lt;b&gt;test&lt;/b&gt;" in page
    assert '<img src="frontier.png"' in page and '<img src="beta_kl.png"' in page
    # findings: no per-prompt values -> the frontier claims are inconclusive, saying why; 3 betas with KL
    # falling (point estimate, r^2 >= 0.8) -> reproduced
    assert page.count("<td>reproduced</td>") == 1 and page.count("<td>inconclusive</td>") == 3
    assert "no reference (SFT) evaluation with per-prompt values" in page
    # DPO β=0.1 best at KL <= 2 is step 100 (0.3 at KL 1.0), win rate 0.7 [0.397, 0.892]
    assert "<td>0.300 ± 0.020</td><td>1.000 ± 0.100</td><td>100</td>" in page
    assert "0.700 [0.397, 0.892]" in page
    md = open(paths["markdown"], encoding="utf-8").read()
    assert "<script>" not in md and "](http" not in md and "\\!\\[img\\]" in md and "fine.<br>really" in md
    assert "\\| pipe" in md
    saved = json.load(open(paths["json"], encoding="utf-8"))
    assert saved["extra"] is None and saved["beta_fit"]["n"] == 3
    rows = list(csv.DictReader(open(paths["csv"], encoding="utf-8")))
    assert len(rows) == 7 and rows[1] == {"method": "dpo", "label": "DPO β=0.1", "seed": "0", "beta": "0.1",
                                          "step": "100",
                                          "kl": "1.0", "kl_se": "0.1", "reward": "0.3", "reward_se": "0.02",
                                          "length": "20.0"}


def test_write_report_with_only_methods_skips_absent_plots(tmp_path):
    paths = report.write_report(tmp_path, {"methods": [PPO_RUN]})
    assert set(paths) == {"html", "markdown", "json", "csv", "frontier"}  # no beta fit, no win rates
    page = open(paths["html"], encoding="utf-8").read()
    assert "<td>PPO</td><td>—</td><td>0.500 ± 0.020</td><td>4.000 ± 0.100</td><td>200</td>" in page  # no budget: best overall
