"""Every shipped YAML config loads into its stage's typed config (or, for accelerate, accelerate's own)."""

from pathlib import Path

import pytest

from rlhfkit.config import load_yaml
from rlhfkit.errors import RlhfkitError, UsageError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def stage_class(name: str):
    from rlhfkit.dpo import DPOConfig
    from rlhfkit.ppo import PPOConfig
    from rlhfkit.reward import RMConfig
    from rlhfkit.sft import PretrainConfig, SFTConfig

    for prefix, cls in (("pretrain", PretrainConfig), ("sft", SFTConfig), ("rm", RMConfig), ("dpo", DPOConfig),
                        ("ppo", PPOConfig)):
        if name.startswith(prefix):
            return cls
    raise AssertionError(f"no stage for configs/{name}")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_stage_configs_load(path):
    cfg = load_yaml(stage_class(path.name), path)
    assert cfg.out.startswith("runs/")


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 2


def test_unknown_key_and_wrong_type_fail_naming_the_key(tmp_path):
    from rlhfkit.sft import SFTConfig

    (tmp_path / "a.yaml").write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(RlhfkitError, match=r"a.yaml: unknown key\(s\) \['lrr'\]"):
        load_yaml(SFTConfig, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("train:\n  batch_size: many\n")
    with pytest.raises(RlhfkitError, match="b.yaml: key 'train.batch_size' should be"):
        load_yaml(SFTConfig, tmp_path / "b.yaml")


# ----------------------------------------------------------------------------------- what people type
def test_yaml_reads_values_as_the_field_expects_and_keys_either_way(tmp_path):
    from rlhfkit.sft import SFTConfig

    (tmp_path / "c.yaml").write_text("optim: {lr: 1e-4, warmup-steps: 3, max_grad_norm: 2}\n"
                                     "train:\n  max-steps: 5\n  batch_size: 4\nlora: {merge: false}\n")
    cfg = load_yaml(SFTConfig, tmp_path / "c.yaml")
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML 1.1 would read '1e-4' as a string
    assert cfg.optim.warmup_steps == 3 and cfg.optim.max_grad_norm == 2.0 and isinstance(cfg.optim.max_grad_norm, float)
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.lora.merge) == (5, 4, False)
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: fast\n")
    with pytest.raises(RlhfkitError, match="bad.yaml: key 'optim.lr' should be float, got 'fast'"):
        load_yaml(SFTConfig, tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("optim: {lr: [\n")
    with pytest.raises(RlhfkitError, match="broken.yaml: not valid YAML"):
        load_yaml(SFTConfig, tmp_path / "broken.yaml")


@pytest.mark.parametrize("argv, merge, resume", [
    ([], True, False),
    (["--lora.merge"], True, False),
    (["--lora.no-merge"], False, False),
    (["--no-lora.merge"], False, False),
    (["--lora.merge", "false"], False, False),
    (["--lora.merge=False"], False, False),
    (["--lora.merge", "NO"], False, False),
    (["--no-lora.merge", "false"], True, False),
    (["--lora.no_merge"], False, False),
    (["--train.resume", "True"], True, True),
    (["--train.resume=1"], True, True),
    (["--train.resume", "--lora.merge", "off"], False, True),
])
def test_booleans_in_every_spelling(argv, merge, resume):
    from rlhfkit.config import parse
    from rlhfkit.sft import SFTConfig

    cfg = parse(SFTConfig, argv)
    assert (cfg.lora.merge, cfg.train.resume) == (merge, resume)


def test_key_equals_value_and_underscores():
    from rlhfkit.config import parse
    from rlhfkit.sft import SFTConfig

    cfg = parse(SFTConfig, ["--model.name=runs/x/model", "--train.max-steps=2", "--optim.warmup_steps", "0",
                            "--data.train=a=b.jsonl"])
    assert (cfg.model.name, cfg.train.max_steps, cfg.optim.warmup_steps, cfg.data.train) == (
        "runs/x/model", 2, 0, "a=b.jsonl")
    with pytest.raises(UsageError) as err:
        parse(SFTConfig, ["--train.max-steps"])  # a value-less option names itself, not a 'True' nobody typed
    assert "--train.max-steps: expects a value" in str(err.value) and "True" not in str(err.value)
    with pytest.raises(RlhfkitError, match="--lora.merge is true or false"):
        parse(SFTConfig, ["--lora.merge=maybe"])


def test_config_and_command_line_together_fill_required_options(tmp_path):
    from rlhfkit.config import parse
    from rlhfkit.evaluate import WinRateArgs

    (tmp_path / "w.yaml").write_text("a: runs/a/model\nprompts: p.jsonl\nsampling:\n  max-new-tokens: 7\n")
    args = parse(WinRateArgs, ["--config", str(tmp_path / "w.yaml"), "--b", "runs/b/model", "--seed=3"])
    assert (args.a, args.b, args.prompts, args.sampling.max_new_tokens, args.seed) == (
        "runs/a/model", "runs/b/model", "p.jsonl", 7, 3)
    args = parse(WinRateArgs, ["--config", str(tmp_path / "w.yaml"), "--b", "x", "--a", "override"])
    assert args.a == "override"  # the command line wins
    with pytest.raises(UsageError, match=r"missing required option\(s\): --b "):
        parse(WinRateArgs, ["--config", str(tmp_path / "w.yaml")])  # --b is still required


# ------------------------------------------------------------------------- shipped configs after the demo
STAGE_COMMANDS = {"pretrain": ["pretrain"], "sft": ["sft"], "rm": ["rm", "train"], "dpo": ["dpo"], "ppo": ["ppo"]}
DEMO_DIR = "runs/sentiment-tiny"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_name_the_demo_and_say_what_to_run_first(path):
    text = path.read_text()
    assert "make demo" in text.split("\n\n")[0]  # the opening comment says what to run first
    for value in (line.split(":", 1)[1].strip() for line in text.splitlines() if ":" in line and "#" not in line):
        if "/" in value and not value.removeprefix("rm:").startswith("runs/"):
            raise AssertionError(f"{path.name}: {value} is neither a demo output nor a new run directory")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_run_as_written_after_the_demo(path, smoke_run, tmp_path):
    """The demo's layout is the same at every preset, so the smoke run stands in for `make demo`'s output."""
    from rlhfkit import cli

    demo_dir = str(smoke_run[0].out)
    text = path.read_text().replace(DEMO_DIR, demo_dir)
    text = "\n".join(f"out: {tmp_path / 'run'}" if line.startswith("out:") else line for line in text.splitlines())
    (tmp_path / path.name).write_text(text)
    command = STAGE_COMMANDS[path.name.split("_")[0]]
    fast = ["--train.max-steps", "1", "--train.no-progress", "--train.eval-every", "1"]
    if "smollm2" in path.name:
        fast += ["--data.max-records", "40"]  # a 135M model: one step and a small held-out set are enough here
    assert cli.main([*command, "--config", str(tmp_path / path.name), *fast]) == 0
    assert (tmp_path / "run" / "model").is_dir()
