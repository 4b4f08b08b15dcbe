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
  first epoch, so the importance ratio is exactly 1 on the first minibatch. With one epoch and no value head
  (RLOO, GRPO) the sampler's own log-probs are the old log-probs and that forward is skipped
  (`rlhfkit.ppo.step`); the first ratio is then 1 to float rounding (~5e-7).
- Log-probs everywhere (rollout, old, reference, training) are those of the distribution the samples came
  from, `rlhfkit.sampling.constrain_logits`: logits / temperature with EOS forbidden at response steps
  < min_new_tokens, renormalised; applied identically to the policy and the reference. So the shaped reward,
  objective/kl and the adaptive controller see the true KL of the sampling distributions (a policy that only
  raises the EOS logit, with EOS forbidden, has KL 0), and the first-minibatch ratio stays 1.
- top_p < 1 and temperature 0 are refused (`check_config`): under top-p a sampled token can lie outside the
  reference's nucleus (probability 0: infinite KL), and greedy decoding has no log-probs to train on.
- Value-free estimators (rloo, grpo) put the KL penalty into a sequence-level reward:
  score - beta * sum_t KL_t (the sum of `shape_rewards` over the response), then subtract the group baseline
  and broadcast the advantage to every response token. Samples of one prompt are consecutive rows.
- `objective/kl` is the batch mean of sum_t KL_t under the chosen estimator: the number the adaptive
  controller holds near its target.

Files: config.py (options), advantages.py (the estimator table), policy.py (policy + value head, old and
reference log-probs), update.py (K epochs of clipped minibatch updates), step.py (one step), run.py (the run).
"""

from rlhfkit.ppo.advantages import ADVANTAGE_ESTIMATORS, AdvantageEstimator, compute_advantages
from rlhfkit.ppo.config import KLConfig, PPOConfig, PTXConfig, check_config
from rlhfkit.ppo.policy import PolicyWithValue, entropy, make_reference, policy_logprobs, reference_logprobs
from rlhfkit.ppo.run import build_trainer, main, run_ppo
from rlhfkit.ppo.step import Trainer, penalise_missing_eos, ppo_step
from rlhfkit.ppo.update import Experience, minibatch_loss, minibatches, ptx_loss, train_epochs

__all__ = ["ADVANTAGE_ESTIMATORS", "AdvantageEstimator", "Experience", "KLConfig", "PPOConfig", "PTXConfig",
           "PolicyWithValue", "Trainer", "build_trainer", "check_config", "compute_advantages", "entropy", "main",
           "make_reference", "minibatch_loss", "minibatches", "penalise_missing_eos", "policy_logprobs",
           "ppo_step", "ptx_loss", "reference_logprobs", "run_ppo", "train_epochs"]
