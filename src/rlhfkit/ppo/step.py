"""One PPO step, in the paper's order (see the package docstring):

    respond -> reference log-probs -> score -> shape rewards -> advantages -> K epochs of updates -> update beta

Old log-probs without a policy forward: with one PPO epoch, no value head (RLOO, GRPO) and a sampler whose
log-probs are exact (`Sampler.exact_logprobs`: the default TorchSampler), the rollout's own log-probs are the
old log-probs -- the same weights and the same constrained distribution, computed incrementally with a KV cache
instead of in one pass, so they agree to the rounding of the model's dtype (~5e-7 in fp32) and the first
minibatch's ratio is 1 to that rounding instead of bit for bit -- and the step skips `policy_logprobs`. The
entropy it logged then comes from the training forwards of the (only) epoch: each minibatch's at the weights it
is trained at, i.e. after j updates for the j-th (identical with one minibatch). PPO with a value head (old
values are needed) or several epochs keeps the old-log-prob pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit import ops, rl
from rlhfkit.generation import Rollout, Sampler, TorchSampler, decode_responses
from rlhfkit.logprobs import Reference
from rlhfkit.ppo.advantages import compute_advantages
from rlhfkit.ppo.config import PPOConfig
from rlhfkit.ppo.policy import PolicyWithValue, policy_logprobs, reference_logprobs
from rlhfkit.ppo.update import Experience, minibatches, train_epochs

if TYPE_CHECKING:
    from rlhfkit.protocols import Scorer


def penalise_missing_eos(scores: torch.Tensor, ended: torch.Tensor, missing_eos_score: float | None
                         ) -> torch.Tensor:
    """Scores (N,) with those of responses that never emitted EOS replaced by `missing_eos_score` (None: kept).
    A truncated response is not what the reward model was trained to judge (lm-human-preferences does this)."""
    if missing_eos_score is None:
        return scores
    return torch.where(ended.to(scores.device), scores, torch.full_like(scores, missing_eos_score))


@dataclass
class Trainer:
    """Everything one PPO step touches."""

    cfg: PPOConfig
    module: Any  # PolicyWithValue, prepared by accelerate
    reference: Reference  # frozen copy, or the LoRA policy with its adapter disabled
    optimizer: Any
    scheduler: Any
    accelerator: Any
    tokenizer: Any
    scorer: Scorer
    controller: Any
    prompts: list[list[int]]
    prompt_texts: list[str]
    ptx_batches: Iterator | None = None
    prompt_where: list[tuple[str, int]] | None = None  # each prompt's (file, line), named if its reward is NaN
    sampler: Sampler | None = None  # what samples rollouts; None: a TorchSampler on the policy itself

    def __post_init__(self) -> None:
        if self.sampler is None:
            self.sampler = TorchSampler(self.inner.policy, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)

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
    c, acc = tr.cfg, tr.accelerator
    seed = c.train.seed * 1_000_003 + step * acc.num_processes + acc.process_index
    return tr.sampler.sample([tr.prompts[i] for i in rows], c.sampling, seed)


def reuses_rollout_logprobs(tr: Trainer) -> bool:
    """Are the rollout's log-probs the old log-probs? One epoch (the policy is trained once, at the weights that
    sampled), no value head (no old values to compute) and exact sampler log-probs (see the module docstring)."""
    return tr.cfg.ppo_epochs == 1 and tr.inner.value_head is None and tr.sampler.exact_logprobs


def old_logprobs(tr: Trainer, rollout: Rollout, chunks: list[torch.Tensor]) -> tuple:
    """(old log-probs (N, A), old values (N, A) or None, entropy (N, A) or None, the kept first forward or
    None). entropy None: the training forwards fill it (`train_epochs(entropy_out=...)`)."""
    c, device = tr.cfg, tr.accelerator.device
    if reuses_rollout_logprobs(tr):
        return rollout.logprobs.to(device), None, None, None
    # the kept first forward would interleave with the ptx forward under DDP; with ptx on it is recomputed
    return policy_logprobs(tr.module, rollout, chunks, c.temperature, device, tr.ptx_batches is None,
                           c.min_new_tokens, tr.tokenizer.eos_token_id)


def score(tr: Trainer, rows: list[int], rollout: Rollout) -> torch.Tensor:
    """Scores (N,) of the decoded responses; the group layout repeats each prompt group_size times."""
    from rlhfkit.labeling.gold import checked_scores

    prompts = [tr.prompt_texts[i] for i in rows for _ in range(tr.cfg.group_size)]
    where = [tr.prompt_where[i] for i in rows for _ in range(tr.cfg.group_size)] if tr.prompt_where else None
    responses = decode_responses(tr.tokenizer, rollout)
    return torch.tensor(checked_scores(tr.scorer, prompts, responses, tr.cfg.reward, where), dtype=torch.float32)


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
    eos = tr.tokenizer.eos_token_id  # every log-prob below is under the sampling distribution: EOS forbidden early
    old_logps, old_values, ent, first = old_logprobs(tr, rollout, epochs[0])
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
    entropy_out = torch.zeros_like(old_logps) if ent is None else None  # (N, A) from the training forwards
    history = train_epochs(tr.module, tr.optimizer, acc, exp, epochs, c, tr.cfg.optim.max_grad_norm,
                           tr.ptx_batches, first, entropy_out)  # 6. K epochs of minibatch updates
    ent = entropy_out if ent is None else ent
    tr.scheduler.step()
    tr.sampler.load_weights(tr.inner.policy)  # a no-op for the TorchSampler, a weight copy for an engine
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
