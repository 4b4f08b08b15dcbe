"""The command table, and the evaluation commands end to end on a tiny saved model."""

import importlib
import json

import pytest

from rlhfkit import cli
from rlhfkit.data import write_jsonl
from rlhfkit.models import save_model


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_resolves_to_a_function(name):
    module, func = cli.COMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_usage_and_unknown_command(capsys):
    assert cli.main([]) == 0 and "experiment sentiment" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


def test_eval_reward_kl_and_win_rate(tmp_path, tiny_tokenizer, tiny_model, capsys):
    model_dir = save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}, {"prompt": "a bad plot"}, {"prompt": "i loved"}])
    common = ["--prompts", str(tmp_path / "p.jsonl"), "--judge", "vader", "--sampling.max-new-tokens", "5"]
    assert cli.main(["eval", "reward-kl", "--policy", str(model_dir), "--reference", str(model_dir), *common,
                     "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert abs(result["kl"]) < 1e-4 and result["n"] == 3  # policy log-probs come from the sampler (fp32 drift) and -1 <= result["reward"] <= 1
    capsys.readouterr()
    assert cli.main(["eval", "win-rate", "--a", str(model_dir), "--b", str(model_dir), *common]) == 0
    wr = json.loads(capsys.readouterr().out)
    assert wr["ties"] == 3 and wr["rate"] == 0.5  # the same model and seed writes the same completions
