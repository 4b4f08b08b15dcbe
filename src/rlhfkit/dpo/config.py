"""DPO's options (offline, online and the sampled-KL evaluation) and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig, refuse_unused
from rlhfkit.errors import RlhfkitError
from rlhfkit.judges.judge import JudgeOptions

JUDGE_OPTIONS = tuple(f.name for f in fields(JudgeOptions))
LossName = Literal["dpo", "ipo", "cdpo", "preferred_ft", "unlikelihood"]


@dataclass(frozen=True)
class DPOConfig(JudgeOptions):
    """rlhfkit dpo: preference optimisation on {"prompt","chosen","rejected"} pairs (or rankings), or online."""

    data: DataConfig = field(default_factory=DataConfig)
    """Preferences or rankings JSONL (offline); in online mode only the length policy and eval_fraction are used."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Initial policy, which is also the reference pi_ref (usually the SFT model's directory)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (lora.r > 0); the reference is then the same weights with the adapter disabled."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, epochs=1))
    """Loop settings (batch_size counts pairs; each step runs 2 * batch_size sequences)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10))
    """Optimizer settings."""
    loss: LossName = "dpo"
    """dpo, ipo, cdpo (DPO with label smoothing), preferred_ft (SFT on chosen only) or unlikelihood."""
    beta: float = 0.1
    """DPO's KL coefficient; also scales the implicit rewards logged for every loss."""
    label_smoothing: float = 0.1
    """cdpo only: assumed probability that a label is flipped, in (0, 0.5)."""
    tau: float = 0.1
    """ipo only: the loss regresses the log-ratio margin to 1 / (2 tau)."""
    alpha: float = 1.0
    """unlikelihood only: weight of the term that lowers p(rejected)."""
    ref_mode: Literal["cached", "per_step"] = "cached"
    """cached: reference log-probs computed once before training (stored as <out>/ref_logps.pt and reused while
    data and reference are unchanged); per_step: a reference forward pass on every batch."""
    shared_prefix: bool = True
    """Run each pair as one row: the prompt (and any response tokens both sides start with) once, then both
    responses, with a 4D attention mask keeping them apart (rlhfkit.prefix; exact). Needs sdpa or eager
    attention; other models fall back to two rows per pair."""
    kl_prompts: int = 16
    """Held-out prompts sampled at evaluation for objective/kl; 0 turns the sampled KL off."""
    kl_samples: int = 2
    """Samples per held-out prompt for objective/kl."""
    max_new_tokens: int = 32
    """Longest sampled response (KL evaluation and online rounds)."""
    online: bool = False
    """Iterated DPO: sample from the policy, label with --judge, train; repeated --rounds times."""
    rounds: int = 2
    """Online rounds."""
    prompts: str = ""
    """Online: prompts JSONL ({"prompt"} per line)."""
    judge: str = "vader"
    """Online labeler: 'vader', 'module:function' (a scorer), 'rm:PATH' (a reward model), 'hf:MODEL' or
    'openai:MODEL' (a language model asked which of two responses is better; see --judge-* options)."""
    samples_per_prompt: int = 4
    """Online: responses K sampled per prompt (all C(K,2) pairs are labelled; exact ties are dropped)."""
    temperature: float = 1.0
    """Online: sampling temperature."""
    label_temperature: float = 0.0
    """Online: Bradley-Terry noise of the labeler (0 follows the scores exactly)."""
    out: str = "runs/dpo"
    """Run directory; the model is saved to <out>/model (online: also <out>/round-<i>/model)."""


def unused_options(cfg: DPOConfig) -> dict[str, str]:
    """Options that have no effect under cfg's loss and mode (dotted field -> why), for `refuse_unused`."""
    unused = {}
    if cfg.loss != "ipo":
        unused["tau"] = "only --loss ipo uses it"
    if cfg.loss != "cdpo":
        unused["label_smoothing"] = "only --loss cdpo uses it"
    if cfg.loss != "unlikelihood":
        unused["alpha"] = "only --loss unlikelihood uses it"
    if cfg.online:
        unused["data.train"] = "--online trains on pairs it samples and labels from --prompts each round"
    else:
        why = "only --online uses it (offline DPO trains on --data.train)"
        unused.update({name: why for name in ("rounds", "prompts", "judge", "samples_per_prompt", "temperature",
                                              "label_temperature", *JUDGE_OPTIONS)})
    return unused


def check_loss_options(cfg: DPOConfig) -> None:
    if cfg.loss == "cdpo" and not 0 < cfg.label_smoothing < 0.5:
        raise RlhfkitError(f"--label-smoothing must be in (0, 0.5) for cdpo, got {cfg.label_smoothing}")
    refuse_unused(cfg, unused_options(cfg))
    if cfg.beta <= 0 or cfg.tau <= 0:
        raise RlhfkitError(f"--beta and --tau must be > 0, got beta={cfg.beta}, tau={cfg.tau}")
