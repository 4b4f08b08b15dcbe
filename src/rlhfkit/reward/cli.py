"""Entry points of `rlhfkit rm train | eval | score` (argv -> config -> stage -> terminal output)."""

from __future__ import annotations

import json

from rlhfkit import config as config_lib
from rlhfkit.reward.score import RMEvalConfig, RMScoreConfig, format_report, run_rm_eval, run_rm_score
from rlhfkit.reward.train import RMConfig, run_rm_train
from rlhfkit.tracking import say


def train_main(argv: list[str]) -> int:
    summary = run_rm_train(config_lib.parse(RMConfig, argv, prog="rlhfkit rm train"))
    say(format_report(summary["held_out"]))
    say(f"rm: reward mean {summary['reward_norm']['mean']:.4f}, std {summary['reward_norm']['std']:.4f} "
        f"({summary['reward_norm']['source']}); model saved to {summary['model']}")
    return 0


def eval_main(argv: list[str]) -> int:
    cfg = config_lib.parse(RMEvalConfig, argv, prog="rlhfkit rm eval")
    report = run_rm_eval(cfg)
    say(format_report(report))
    print(json.dumps({k: v for k, v in report.items() if k != "calibration"}))
    return 0


def score_main(argv: list[str]) -> int:
    cfg = config_lib.parse(RMScoreConfig, argv, prog="rlhfkit rm score")
    n = run_rm_score(cfg)
    say(f"rm score: {n} records scored -> {cfg.out}")  # the scorer says whether its rewards are raw or normalised
    return 0
