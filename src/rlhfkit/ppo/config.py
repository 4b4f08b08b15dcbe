"""PPO's options: the KL penalty and its controller, the pretraining mix, and the stage's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhfkit.config import LoRAConfig, ModelConfig, OptimConfig, TrainConfig, refuse_unused
from rlhfkit.errors import RlhfkitError
from rlhfkit.judges.judge import JudgeOptions
from rlhfkit.ppo.advantages import ADVANTAGE_ESTIMATORS
from rlhfkit.sampling import SamplingConfig, check_sampling


@dataclass(frozen=True)
class KLConfig:
    """The KL penalty beta * KL(pi || pi_ref) and its controller."""

    coef: float = 0.05
    """beta: the initial (or fixed) KL coefficient."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator (Schulman's k1 / k2 / k3) used in the reward and in objective/kl."""
    adaptive: bool = False
    """Adapt beta to hold the measured KL near `target` (Ziegler et al. 2019, eq. 2.2)."""
    target: float = 6.0
    """Target sequence KL in nats for the adaptive controller."""
    horizon: int = 10000
    """Adaptive controller horizon in samples: larger moves beta more slowly."""


@dataclass(frozen=True)
class PTXConfig:
    """PPO-ptx (InstructGPT): add gamma * LM loss on a pretraining corpus batch to every minibatch update."""

    coef: float = 0.0
    """gamma; 0 turns the pretraining mix off."""
    data: str | None = None
    """Corpus JSONL ({"text"}) for the LM loss; required when coef > 0."""
    batch_size: int = 4
    """Corpus blocks per minibatch update."""
    max_length: int = 64
    """Tokens per corpus block."""


@dataclass(frozen=True)
class PPOConfig(JudgeOptions):
    """rlhfkit ppo: RLHF with a KL penalty; GAE (PPO) or value-free RLOO / GRPO advantages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy to start from (a model directory, usually the SFT model); the reference is a frozen copy."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (lora.r > 0): the reference is then the base with the adapter disabled."""
    prompts: str = ""
    """Prompts JSONL ({"prompt"})."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; longer prompts keep their end."""
    reward: str = "vader"
    """Score of a response: `rm:PATH` (a reward model), `vader`, `module:function`, or a language model's 1-7 score
    (`hf:MODEL`, `openai:MODEL`; see --judge-* options)."""
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    """Advantage estimator: GAE with a value head (PPO), or the value-free RLOO / GRPO group baselines."""
    group_size: int = 1
    """Completions sampled per prompt (consecutive rows); rloo and grpo need >= 2."""
    max_new_tokens: int = 24
    """Longest response in tokens."""
    min_new_tokens: int = 0
    """Forbid EOS before this many tokens (= max_new_tokens gives fixed-length responses)."""
    temperature: float = 1.0
    """Sampling temperature > 0 (log-probs everywhere use logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold; must stay 1 (a KL to the reference is infinite under top-p truncation)."""
    generation_batch_size: int = 64
    """Sequences per generation forward pass."""
    ppo_epochs: int = 4
    """Passes of minibatch updates over each batch of rollouts."""
    minibatch_size: int = 16
    """Completions per optimizer step."""
    clip_range: float = 0.2
    """PPO ratio clip epsilon."""
    value_clip_range: float = 0.2
    """Value clip around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss (GAE only)."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """Lambda of GAE."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over each rollout batch."""
    eos_penalty: bool = True
    """Replace the score of responses that did not emit EOS by `missing_eos_score` (`--no-eos-penalty`: off)."""
    missing_eos_score: float = -1.0
    """Score given to responses cut off by max_new_tokens when eos_penalty is on."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty and controller."""
    ptx: PTXConfig = field(default_factory=PTXConfig)
    """Optional pretraining mix (PPO-ptx)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, max_steps=100, save_every=25,
                                                                   log_every=1))
    """Loop settings: batch_size = prompts per rollout batch per process, max_steps = rollout batches."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant"))
    """Optimizer settings (the schedule advances once per rollout batch)."""
    out: str = "runs/ppo"
    """Run directory; the policy is saved to <out>/model."""

    @property
    def sampling(self) -> SamplingConfig:
        """The distribution rollouts are sampled from (and every log-prob is taken under)."""
        return SamplingConfig(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                              temperature=self.temperature, top_p=self.top_p, samples_per_prompt=self.group_size,
                              batch_size=self.generation_batch_size)


def unused_options(cfg: PPOConfig) -> dict[str, str]:
    """Options that have no effect in cfg's combination (dotted field -> why), for `refuse_unused`."""
    unused = {}
    if not cfg.kl.adaptive:
        unused.update({"kl.target": "only --kl.adaptive uses it", "kl.horizon": "only --kl.adaptive uses it"})
    if cfg.ptx.coef == 0:
        why = "the pretraining mix is off while --ptx.coef is 0"
        unused.update({f"ptx.{name}": why for name in ("data", "batch_size", "max_length")})
    if not ADVANTAGE_ESTIMATORS[cfg.advantage].value_head:
        why = f"--advantage {cfg.advantage} has no value head (only gae does)"
        unused.update({name: why for name in ("vf_coef", "value_clip_range", "gamma", "lam")})
    if not cfg.eos_penalty:
        unused["missing_eos_score"] = "it is the score of the EOS penalty, which --no-eos-penalty turns off"
    return unused


def check_config(cfg: PPOConfig) -> None:
    """Fail before loading anything on options that cannot work together, or that would do nothing."""
    refuse_unused(cfg, unused_options(cfg))
    if not cfg.prompts:
        raise RlhfkitError("--prompts is required (a JSONL file of {\"prompt\": ...} records)")
    if cfg.group_size < ADVANTAGE_ESTIMATORS[cfg.advantage].min_group_size:
        raise RlhfkitError(f"--advantage {cfg.advantage} needs --group-size >= "
                           f"{ADVANTAGE_ESTIMATORS[cfg.advantage].min_group_size} samples per prompt")
    if cfg.ptx.coef > 0 and not cfg.ptx.data:
        raise RlhfkitError("--ptx.coef > 0 needs --ptx.data (a corpus JSONL)")
    if cfg.kl.adaptive and cfg.kl.target <= 0:
        raise RlhfkitError("--kl.target must be > 0 for the adaptive controller")
    check_sampling(cfg.temperature, cfg.top_p, needs_logprobs=True)
