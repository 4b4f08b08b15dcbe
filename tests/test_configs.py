"""Every shipped YAML config loads into its stage's typed config (or, for accelerate, accelerate's own)."""

from pathlib import Path

import pytest

from rlhfkit.config import load_yaml
from rlhfkit.errors import RlhfkitError

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
