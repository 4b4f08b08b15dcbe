"""RLHF with PPO (Ziegler et al. 2019; Ouyang et al. 2022), plus the value-free RLOO / GRPO estimators.

One step reads like the paper:

    respond (sample K completions per prompt) -> reference log-probs -> score -> shape rewards (-beta * KL_t,
    score on the EOS token) -> advantages (GAE from a value head, or RLOO / GRPO group baselines) ->
    K epochs of clipped minibatch updates -> update beta (fixed or adaptive controller)

Design choices (and where they depart from the papers):
- Value head: a `torch.nn.Linear(hidden, 1)` on the policy's last hidden state (shared trunk, as in
  lm-human-preferences), initialised to zero so the first values are 0. It lives next to the policy in one
  `PolicyWithValue` module so accelerate/DDP wrap and checkpoint both together. With `--advantage rloo|grpo`
  there is no value head at all.
- Reference: a frozen copy of the initial policy; with LoRA (`--lora.r`) the same model with its adapter
  disabled (no second copy in memory).
- Dropout is off for the whole run (the policy is kept in eval mode during training too, as TRL's RL trainers
  do). Old log-probs are computed by the very forward function training uses, on the same minibatches as the
  first epoch, so the importance ratio is exactly 1 on the first minibatch.
- Log-probs everywhere (rollout, old, reference, training) are those of the distribution the samples came
  from, `rlhfkit.generation.constrain_logits`: logits / temperature with EOS forbidden at response steps
  < min_new_tokens, renormalised; applied identically to the policy and the reference. So the shaped reward,
  objective/kl and the adaptive controller see the true KL of the sampling distributions (a policy that only
  raises the EOS logit, with EOS forbidden, has KL 0), and the first-minibatch ratio stays exactly 1.
- top_p < 1 and temperature 0 are refused (`check_config`): under top-p a sampled token can lie outside the
  reference's nucleus (probability 0: infinite KL), and greedy decoding has no log-probs to train on.
- Value-free estimators (rloo, grpo) put the KL penalty into a sequence-level reward:
  score - beta * sum_t KL_t (the sum of `shape_rewards` over the response), then subtract the group baseline
  and broadcast the advantage to every response token. Samples of one prompt are consecutive rows.
- `objective/kl` is the batch mean of sum_t KL_t under the chosen estimator: the number the adaptive
  controller holds near its target.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from rlhfkit import config as config_lib
from rlhfkit import losses, ops, rl
from rlhfkit.config import LoRAConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.errors import RlhfkitError, TrainingDiverged
from rlhfkit.generation import Rollout, check_sampling, positions, response_token_logprobs
from rlhfkit.tracking import Run, say


# ------------------------------------------------------------------------------------------------------ config
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
class PPOConfig:
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
    """Score of a response: `rm:PATH` (a trained reward model), `vader`, or `module:function`."""
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


def check_config(cfg: PPOConfig) -> None:
    """Fail before loading anything on options that cannot work together."""
    if not cfg.prompts:
        raise RlhfkitError("--prompts is required (a JSONL file of {\"prompt\": ...} records)")
    if cfg.advantage in ("rloo", "grpo") and cfg.group_size < 2:
        raise RlhfkitError(f"--advantage {cfg.advantage} needs --group-size >= 2 samples per prompt")
    if cfg.ptx.coef > 0 and not cfg.ptx.data:
        raise RlhfkitError("--ptx.coef > 0 needs --ptx.data (a corpus JSONL)")
    if cfg.kl.adaptive and cfg.kl.target <= 0:
        raise RlhfkitError("--kl.target must be > 0 for the adaptive controller")
    check_sampling(cfg.temperature, cfg.top_p, needs_logprobs=True)


# ------------------------------------------------------------------------------------------ model and forward
def response_forward(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, A: int,
                     temperature: float = 1.0, value_head: Any = None, min_new_tokens: int = 0,
                     eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs, values and logits of the A response tokens that follow P (left-padded) prompt columns.

    input_ids, attention_mask: (B, P + A). Returns logprobs (B, A) in fp32 under the sampling distribution
    (`constrain_logits`: logits / temperature, EOS forbidden at response steps < min_new_tokens; 0 is NOT
    applied on padding), values (B, A) or None (V(s_t) read at the hidden state that predicts response token t),
    and the constrained logits (B, A, V). Only the A + 1 last positions go through the LM head (`logits_to_keep`).
    """
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
             logits_to_keep=A + 1, output_hidden_states=value_head is not None)
    # (B, A + 1, V): position P-1 predicts response token 0
    logprobs, logits = response_token_logprobs(out.logits[:, -(A + 1):], input_ids[:, P - 1:],
                                               temperature=temperature, min_new_tokens=min_new_tokens,
                                               eos_id=eos_id)  # (B, A), (B, A + 1, V)
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, P - 1: P - 1 + A]  # (B, A, H)
        values = value_head(hidden.float()).squeeze(-1)  # (B, A)
    return logprobs, values, logits[:, :-1]


class PolicyWithValue(torch.nn.Module):
    """The policy LM and (optionally) a scalar value head on its last hidden state, as one module."""

    def __init__(self, policy: Any, value_head: bool):
        super().__init__()
        self.policy = policy
        self.value_head = None
        if value_head:
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)  # V = 0 at first: no arbitrary initial baseline
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, A: int,
                temperature: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None):
        return response_forward(self.policy, input_ids, attention_mask, P, A, temperature, self.value_head,
                                min_new_tokens, eos_id)


def make_reference(policy: Any) -> Any:
    """A frozen copy of the initial policy, or None when the policy is a LoRA model (its base is the reference)."""
    from rlhfkit.models import is_peft

    if is_peft(policy):
        return None
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def minibatches(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into chunks of `size` (the last one may be shorter)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.split(size))


# ----------------------------------------------------------------------------------------- the step's parts
def policy_logprobs(module: Any, rollout: Rollout, chunks: list[torch.Tensor], temperature: float, device: Any,
                    keep_first: bool = False, min_new_tokens: int = 0, eos_id: int | None = None):
    """Old log-probs (N, A), old values (N, A) or None, per-token entropy (N, A) and `first`, dropout off,
    computed on the same minibatch rows (`chunks`) and by the same forward as the first training epoch, under
    the sampling distribution (temperature, EOS forbidden at steps < min_new_tokens; see response_forward).

    keep_first: `first` is the first chunk's (logprobs, values) WITH their autograd graph (else None). The first
    minibatch of the first epoch is trained at exactly these parameters, so its training forward is this one (one
forward fewer per step; the ratio there is exp(0) = 1 by construction).
    """
    ids, attn = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    N, has_values = ids.shape[0], getattr(module, "module", module).value_head is not None
    logps, ent = torch.zeros(N, A, device=device), torch.zeros(N, A, device=device)
    values = torch.zeros(N, A, device=device) if has_values else None
    first = None
    for k, idx in enumerate(chunks):
        idx = idx.to(device)
        with torch.set_grad_enabled(keep_first and k == 0):
            lp, v, logits = module(ids[idx], attn[idx], P, A, temperature, min_new_tokens, eos_id)
        if keep_first and k == 0:
            first = (lp, v)
        with torch.no_grad():
            logps[idx] = lp.detach()
            ent[idx] = entropy(logits.detach())  # (b, A)
            if values is not None:
                values[idx] = v.detach()
    return logps, values, ent, first


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (...) of the categorical given by logits (..., V); -inf logits (forbidden tokens) add 0, not NaN."""
    p, logp = logits.softmax(-1), logits.log_softmax(-1)
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


@torch.no_grad()
def reference_logprobs(module: PolicyWithValue, reference: Any, rollout: Rollout, chunks: list[torch.Tensor],
                       temperature: float, device: Any, min_new_tokens: int = 0, eos_id: int | None = None
                       ) -> torch.Tensor:
    """Log-probs (N, A) of the responses under the frozen reference (or the LoRA base, adapter disabled), under
    the same constrained distribution as the policy's (temperature, EOS forbidden at steps < min_new_tokens)."""
    ids, attn = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    out = torch.zeros(ids.shape[0], A, device=device)
    for idx in chunks:
        idx = idx.to(device)
        if reference is None:
            with module.policy.disable_adapter():
                out[idx] = response_forward(module.policy, ids[idx], attn[idx], P, A, temperature, None,
                                            min_new_tokens, eos_id)[0]
        else:
            out[idx] = response_forward(reference, ids[idx], attn[idx], P, A, temperature, None, min_new_tokens,
                                        eos_id)[0]
    return out


def penalise_missing_eos(scores: torch.Tensor, ended: torch.Tensor, missing_eos_score: float | None
                         ) -> torch.Tensor:
    """Scores (N,) with those of responses that never emitted EOS replaced by `missing_eos_score` (None: kept).
    A truncated response is not what the reward model was trained to judge (lm-human-preferences does this)."""
    if missing_eos_score is None:
        return scores
    return torch.where(ended.to(scores.device), scores, torch.full_like(scores, missing_eos_score))


def compute_advantages(method: str, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                       group_size: int, gamma: float, lam: float, whiten: bool
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token advantages (N, A) and GAE returns (N, A) (None for the value-free estimators).

    rewards: (N, A) shaped per-token rewards (`rl.shape_rewards`); values: (N, A) old values (GAE only);
    mask: (N, A). rloo / grpo use the sequence reward sum_t r_t = score - beta * sum_t KL_t.
    """
    mask = mask.to(rewards.dtype)
    if method == "gae":
        advantages, returns = rl.gae(rewards, values, mask, gamma, lam)  # (N, A), (N, A)
        return (ops.masked_whiten(advantages, mask) if whiten else advantages), returns
    sequence_reward = (rewards * mask).sum(-1)  # (N,)
    baseline = rl.rloo_advantages if method == "rloo" else rl.grpo_advantages
    adv = baseline(sequence_reward, group_size)  # (N,)
    if whiten:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8) if adv.numel() > 1 else adv
    return adv[:, None] * mask, None  # (N, A)


@dataclass
class Experience:
    """One batch of scored rollouts, ready for K epochs of updates. N completions, T = P + A tokens."""

    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    P: int
    A: int
    mask: torch.Tensor  # (N, A) response tokens incl. EOS
    old_logprobs: torch.Tensor  # (N, A)
    old_values: torch.Tensor | None  # (N, A)
    advantages: torch.Tensor  # (N, A)
    returns: torch.Tensor | None  # (N, A)
    eos_id: int | None = None  # forbidden at response steps < cfg.min_new_tokens in every training forward


def minibatch_loss(module: Any, exp: Experience, idx: torch.Tensor, cfg: PPOConfig, forward: tuple | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss (+ vf_coef * clipped value loss) on the rows `idx`, token-averaged.
    forward: this minibatch's (logprobs, values) when already computed with their graph (see policy_logprobs)."""
    mask = exp.mask[idx]  # (b, A)
    if forward is None:
        forward = module(exp.input_ids[idx], exp.attention_mask[idx], exp.P, exp.A, cfg.temperature,
                         cfg.min_new_tokens, exp.eos_id)[:2]
    logps, values = forward
    pg, metrics = losses.ppo_policy_loss(logps, exp.old_logprobs[idx], exp.advantages[idx], mask, cfg.clip_range)
    policy_loss = ops.masked_mean(pg, mask)
    metrics = dict(metrics, **{"ppo/policy_loss": policy_loss.detach(),
                               "ppo/ratio_dev_max": ((logps - exp.old_logprobs[idx]).abs() * mask).max().detach()})
    if values is None:
        return policy_loss, metrics
    vf, vf_metrics = losses.ppo_value_loss(values, exp.old_values[idx], exp.returns[idx], mask,
                                           cfg.value_clip_range)
    value_loss = ops.masked_mean(vf, mask)
    metrics.update(vf_metrics, **{"ppo/value_loss": value_loss.detach()})
    return policy_loss + cfg.vf_coef * value_loss, metrics


def ptx_loss(module: Any, batch: Any) -> torch.Tensor:
    """Mean next-token NLL on a right-padded corpus batch, through the same module (so DDP sees it):
    the 'response' is every token after the first."""
    T = batch.input_ids.shape[1]
    logps, _, _ = module(batch.input_ids, batch.attention_mask, 1, T - 1)  # (B, T - 1)
    nll, n = losses.sft_loss(logps, batch.attention_mask[:, 1:])
    return nll.sum() / n.sum().clamp(min=1)


def train_epochs(module: Any, optimizer: Any, accelerator: Any, exp: Experience, epochs: list[list[torch.Tensor]],
                 cfg: PPOConfig, max_grad_norm: float | None, ptx_batches: Iterator | None = None,
                 first_forward: tuple | None = None) -> list[dict[str, float]]:
    """K epochs of minibatch updates; `epochs[k]` lists epoch k's minibatch rows. Returns per-update metrics
    (the first entry is the first minibatch, where the ratio must be exactly 1). first_forward: the first
    minibatch's forward kept from the old-log-prob pass (None: recompute it)."""
    history = []
    for k, chunks in enumerate(epochs):
        for j, idx in enumerate(chunks):
            idx = idx.to(exp.input_ids.device)
            if ptx_batches is not None:
                with accelerator.no_sync(module):  # grads accumulate; the PPO backward below syncs them
                    lm = ptx_loss(module, next(ptx_batches).to(exp.input_ids.device))
                    accelerator.backward(cfg.ptx.coef * lm)
            loss, metrics = minibatch_loss(module, exp, idx, cfg, first_forward if k == j == 0 else None)
            if not torch.isfinite(loss):
                raise TrainingDiverged("non-finite PPO loss; lower --optim.lr or check the reward scale")
            accelerator.backward(loss)
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            row = {k: float(v) for k, v in metrics.items()}
            if ptx_batches is not None:
                row["ppo/ptx_loss"] = float(lm.detach())
            history.append(row)
    return history


# --------------------------------------------------------------------------------------------------- the step
@dataclass
class Trainer:
    """Everything one PPO step touches."""

    cfg: PPOConfig
    module: Any  # PolicyWithValue, prepared by accelerate
    reference: Any  # frozen copy, or None for LoRA (adapter disabled)
    optimizer: Any
    scheduler: Any
    accelerator: Any
    tokenizer: Any
    scorer: Callable[[list[str], list[str]], list[float]]
    controller: Any
    prompts: list[list[int]]
    prompt_texts: list[str]
    ptx_batches: Iterator | None = None

    @property
    def inner(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.module)


def step_prompts(tr: Trainer, step: int) -> list[int]:
    """Indices of this process's prompts for `step` (a seeded permutation per epoch, as rlhfkit.loop does)."""
    from rlhfkit.loop import step_indices

    per_step = replace(tr.cfg.train, grad_accum=1)
    return step_indices(per_step, len(tr.prompts), step, tr.accelerator.num_processes,
                        tr.accelerator.process_index)[0]


def respond(tr: Trainer, rows: list[int], step: int) -> Rollout:
    from rlhfkit.generation import sample

    c, acc = tr.cfg, tr.accelerator
    seed = c.train.seed * 1_000_003 + step * acc.num_processes + acc.process_index
    return sample(tr.inner.policy, [tr.prompts[i] for i in rows], tr.tokenizer.pad_token_id,
                  tr.tokenizer.eos_token_id, c.group_size, c.max_new_tokens, c.temperature, c.top_p,
                  c.min_new_tokens, seed, c.generation_batch_size)


def score(tr: Trainer, rows: list[int], rollout: Rollout) -> torch.Tensor:
    """Scores (N,) of the decoded responses; the group layout repeats each prompt group_size times."""
    from rlhfkit.generation import decode_responses
    from rlhfkit.labeling.gold import checked_scores

    prompts = [tr.prompt_texts[i] for i in rows for _ in range(tr.cfg.group_size)]
    responses = decode_responses(tr.tokenizer, rollout)
    return torch.tensor(checked_scores(tr.scorer, prompts, responses, tr.cfg.reward), dtype=torch.float32)


def ppo_step(tr: Trainer, step: int) -> dict[str, float]:
    """One PPO step (see the module docstring); returns the step's metrics."""
    c, acc, device = tr.cfg, tr.accelerator, tr.accelerator.device
    tr.module.eval()  # dropout off for every log-prob in this step, training included
    t0 = time.time()
    rows = step_prompts(tr, step)
    rollout = respond(tr, rows, step)  # 1. respond
    t1 = time.time()
    N, mask = rollout.response_ids.shape[0], rollout.response_mask.to(device)
    epochs = [minibatches(N, c.minibatch_size, c.train.seed * 7919 + step * 131 + k) for k in range(c.ppo_epochs)]
    # the kept first forward would interleave with the ptx forward under DDP; with ptx on it is recomputed
    eos = tr.tokenizer.eos_token_id  # every log-prob below is under the sampling distribution: EOS forbidden early
    old_logps, old_values, ent, first = policy_logprobs(tr.module, rollout, epochs[0], c.temperature, device,
                                                        tr.ptx_batches is None, c.min_new_tokens, eos)
    ref_logps = reference_logprobs(tr.inner, tr.reference, rollout, epochs[0], c.temperature, device,
                                   c.min_new_tokens, eos)  # 2.
    t2 = time.time()
    raw_scores = score(tr, rows, rollout).to(device)  # 3. score
    scores = penalise_missing_eos(raw_scores, rollout.ended, c.missing_eos_score if c.eos_penalty else None)
    t3 = time.time()
    beta = tr.controller.value
    rewards = rl.shape_rewards(scores, old_logps, ref_logps, mask, beta, c.kl.estimator)  # 4. shape, (N, A)
    advantages, returns = compute_advantages(c.advantage, rewards, old_values, mask, c.group_size, c.gamma,
                                             c.lam, c.whiten_advantages)  # 5. advantages
    exp = Experience(rollout.input_ids.to(device), rollout.attention_mask.to(device), rollout.prompt_ids.shape[1],
                     rollout.response_ids.shape[1], mask, old_logps, old_values, advantages, returns, eos)
    history = train_epochs(tr.module, tr.optimizer, acc, exp, epochs, c, tr.cfg.optim.max_grad_norm,
                           tr.ptx_batches, first)  # 6. K epochs of minibatch updates
    tr.scheduler.step()
    t4 = time.time()
    seq_kl = ops.masked_sum(rl.kl_penalty(old_logps, ref_logps, c.kl.estimator), mask, dim=-1)  # (N,)
    kl, mean_score = _global_mean(acc, seq_kl), _global_mean(acc, raw_scores)
    tr.controller.update(kl, N * acc.num_processes)  # 7. update beta
    metrics = {
        "objective/kl": kl, "objective/kl_coef": beta, "objective/score": mean_score,
        "objective/entropy": float(ops.masked_mean(ent, mask)),
        "objective/response_length": float(mask.float().sum(-1).mean()),
        "objective/ended": float(rollout.ended.float().mean()),
        "time/generation": t1 - t0, "time/logprobs": t2 - t1, "time/scoring": t3 - t2, "time/optimisation": t4 - t3,
        "perf/rollouts_per_s": N * acc.num_processes / (t4 - t0),
    }
    metrics.update(_mean_rows(history))
    metrics["ppo/ratio_dev_first"] = history[0]["ppo/ratio_dev_max"]
    if returns is not None:
        metrics["ppo/value_explained_var"] = rl.explained_variance(old_values, returns, mask)
    return metrics


def _global_mean(accelerator: Any, values: torch.Tensor) -> float:
    if accelerator.num_processes > 1:
        values = accelerator.gather(values)
    return float(values.float().mean())


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


# ------------------------------------------------------------------------------------------------ the run
def load_prompts(cfg: PPOConfig, tokenizer: Any) -> tuple[list[list[int]], list[str]]:
    from rlhfkit.data import encode_prompt, read_records

    texts = [r["prompt"] for r in read_records(cfg.prompts, "prompts")]
    return [encode_prompt(tokenizer, t)[-cfg.max_prompt_length:] for t in texts], texts


def ptx_stream(cfg: PPOConfig, tokenizer: Any) -> Iterator | None:
    """Endless batches of packed corpus blocks for PPO-ptx (None when the mix is off)."""
    if cfg.ptx.coef <= 0:
        return None
    from rlhfkit.data import collate, read_records
    from rlhfkit.sft import pack_corpus

    blocks = pack_corpus(tokenizer, [r["text"] for r in read_records(cfg.ptx.data, "corpus")], cfg.ptx.max_length)
    if not blocks:
        raise RlhfkitError(f"{cfg.ptx.data}: no corpus block of at least 2 tokens for --ptx.data")
    batches = [blocks[i: i + cfg.ptx.batch_size] for i in range(0, len(blocks), cfg.ptx.batch_size)]
    return (collate(b, tokenizer.pad_token_id) for b in itertools.cycle(batches))


def build_trainer(cfg: PPOConfig, accelerator: Any) -> Trainer:
    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.loop import make_optimizer
    from rlhfkit.models import apply_lora, load_causal_lm

    scorer = make_scorer(cfg.reward)  # fail on a bad spec before loading the model
    policy, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed)
    policy = apply_lora(policy, cfg.lora)
    reference = make_reference(policy)
    if reference is not None:
        reference.to(accelerator.device)
    module = PolicyWithValue(policy, value_head=cfg.advantage == "gae")
    optimizer, scheduler = make_optimizer(module, cfg.optim, cfg.train.max_steps or 1)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    controller = (rl.AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
                  else rl.FixedKLController(cfg.kl.coef))
    prompts, texts = load_prompts(cfg, tokenizer)
    return Trainer(cfg, module, reference, optimizer, scheduler, accelerator, tokenizer, scorer, controller,
                   prompts, texts, ptx_stream(cfg, tokenizer))


def run_ppo(cfg: PPOConfig) -> dict[str, Any]:
    """Train; returns a summary (first/last score and KL, final beta, timings, paths)."""
    from tqdm.auto import tqdm

    from rlhfkit.loop import (load_latest_checkpoint, make_accelerator, save_checkpoint, save_final_model,
                              save_snapshot, snapshot_interval)

    check_config(cfg)
    accelerator = make_accelerator(cfg.train)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)
    tr = build_trainer(cfg, accelerator)
    start, steps, first = 0, cfg.train.max_steps or 1, None
    if cfg.train.resume and (restored := load_latest_checkpoint(accelerator, run.dir)) is not None:
        start, extra = restored
        tr.controller.load_state_dict(extra["kl"])
        first = extra.get("first")
    run.truncate_metrics(start)  # a fresh run in an old directory starts a fresh log; a resumed one re-logs
    say(f"ppo: {len(tr.prompts)} prompts, {cfg.advantage} advantages, {steps} steps of "
        f"{cfg.train.batch_size} x {cfg.group_size} completions, reward {cfg.reward}")
    t0, status, metrics, done, snapshot = time.time(), "done", {}, start, None
    every = snapshot_interval(cfg.train, steps)
    bar = tqdm(range(start, steps), disable=not (cfg.train.progress and accelerator.is_main_process),
               desc=run.dir.name, dynamic_ncols=True)
    for step in bar:
        metrics, done = ppo_step(tr, step), step + 1
        first = first or {k: metrics[k] for k in ("objective/score", "objective/kl")}
        run.log(done, metrics)
        bar.set_postfix(score=f"{metrics['objective/score']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
        out_of_time = cfg.train.max_minutes is not None and time.time() - t0 > 60 * cfg.train.max_minutes
        if done % cfg.train.save_every == 0 or done == steps or out_of_time:
            save_checkpoint(accelerator, run.dir, done, extra={"kl": tr.controller.state_dict(),
                                                                   "kl_coef": tr.controller.value,
                                                                   "first": first},
                            keep=cfg.train.keep_checkpoints)
        snapshot_due = every is not None and (done % every == 0 or done == steps or out_of_time)
        snapshot = save_snapshot(accelerator, tr.inner.policy, tr.tokenizer, run.dir, done) if snapshot_due else None
        if out_of_time:
            status = "time_limit"
            break
    summary = {"step": done, "status": status, "first": first, "last": metrics, "kl_coef": tr.controller.value,
               "seconds": time.time() - t0, "model": str(run.dir / "model")}
    if accelerator.is_main_process:
        save_final_model(tr.inner.policy, tr.tokenizer, run.dir, snapshot, cfg.lora.merge)
        run.write_json("summary.json", summary)
    run.close()
    return summary


def main(argv: list[str]) -> int:
    summary = run_ppo(config_lib.parse(PPOConfig, argv, prog="rlhfkit ppo"))
    last = summary["last"]
    if last:
        say(f"ppo: score {summary['first']['objective/score']:.3f} -> {last['objective/score']:.3f}, "
            f"KL {last['objective/kl']:.3f}, beta {summary['kl_coef']:.4g}; model saved to {summary['model']}")
    return 0
