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


@pytest.mark.parametrize("group", sorted(cli.groups()))
def test_a_group_lists_its_subcommands(group, capsys):
    assert cli.main([group]) == 0 and cli.main([group, "--help"]) == 0
    out = capsys.readouterr().out
    subcommands = [name for name in cli.COMMANDS if name.startswith(group + " ")]
    assert subcommands and all(name in out for name in subcommands)
    assert cli.main([group, "frob"]) == 2 and f"unknown subcommand 'frob' of '{group}'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_takes_config_and_shows_flags_both_ways(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*name.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out
    assert "{True,False}" not in out  # booleans are --flag / --no-flag, never a value to type


def test_interrupt_names_a_flag_that_exists():
    from rlhfkit.config import TrainConfig, bool_options

    assert "--train.resume" in cli.INTERRUPTED and "resume" in bool_options(TrainConfig)


def test_a_missing_model_directory_is_named_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    from rlhfkit.models import looks_like_path

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}])
    write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 4)
    assert looks_like_path("runs/sentiment-tiny/sft/model") and looks_like_path("./m") and looks_like_path("/abs/m")
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M") and not looks_like_path("gpt2")
    assert cli.main(["sample", "--model", "runs/nowhere/sft/model", "--prompts", "p.jsonl"]) == 1
    assert "model directory not found: runs/nowhere/sft/model" in capsys.readouterr().err
    assert cli.main(["rm", "train", "--model.name=./no-such-trunk", "--data.train", "x.jsonl"]) == 1
    assert "model directory not found: ./no-such-trunk" in capsys.readouterr().err
