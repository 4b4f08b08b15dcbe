"""DPO and its baselines (IPO, conservative DPO, preferred-FT, unlikelihood), offline and online.

    rlhfkit dpo --data.train prefs.jsonl --loss dpo --beta 0.1
    rlhfkit dpo --online --rounds 3 --prompts prompts.jsonl --judge vader
    rlhfkit eval beta-for-kl --target-kl 4 --runs runs/dpo-b0.1 runs/dpo-b0.5

Offline (Rafailov et al. 2023, eq. 7): every step runs the policy once on the batch's B pairs. By default each
pair is one row, its prompt laid out once and followed by both responses under a 4D attention mask that keeps
them apart (`rlhfkit.data.packing`, exact: the prompt is not run twice); with `--no-shared-prefix` (or an attention
implementation without custom masks) a (2B, T) batch holds the B chosen responses in rows [0, B) and the B
rejected ones in rows [B, 2B). Either way the objective sees (2B,) log-probs, chosen first. The
reference log-probs are precomputed once before training and cached in the run directory (`ref_logps.pt`,
keyed by a hash of the tokenised data and the reference weights), or computed every step (`--ref-mode
per_step`). With LoRA the reference is the policy with its adapter disabled (no second model in memory); with
full fine-tuning a frozen copy is kept only when something needs pi_ref after training starts (per-step
reference, the sampled KL at evaluation, online rounds). Dropout is off whenever reference log-probs are taken.

The loss is chosen by a table lookup (`PAIR_LOSSES`) before training; `rlhfkit.loop.fit` only ever sees the
resulting objective. Diagnostics: implicit rewards beta * log(pi / pi_ref) (`rewards/*`) for every loss, so the
baselines can be compared on the same scale, and at evaluation the sequence-level KL(pi || pi_ref) estimated by
sampling from the policy on held-out prompts (`objective/kl`).

Online / iterated DPO: each round samples K responses per prompt from the current policy, labels every pair with a
gold scorer or reward model (`rlhfkit.labeling`), and trains one more round on those pairs; the reference stays the
initial model. Every round keeps its data and checkpoint under `round-<i>/`.

Known trap (docs/design.md): a first response token shared by y_w and y_l contributes +g to the chosen side and -g to
the rejected side at the same logits, which cancel exactly: DPO cannot teach it (SFT must). `summary.json` counts
such pairs (`pairs_sharing_first_token`).

Departures from the paper: the baselines report the same beta-scaled implicit rewards as DPO (diagnostics only);
logits are computed only from the first response position onward (`logits_to_keep`), which changes nothing in
the loss and saves the LM head on prompt tokens.

Files: config.py (options), objective.py (pairs, the loss table, the objective `fit` minimises),
refcache.py (reference log-probs computed once), offline.py (a run on a file), online.py (iterated rounds),
cli.py (`rlhfkit dpo`, `rlhfkit eval beta-for-kl`).
"""

from rlhfkit.dpo.cli import BetaForKLArgs, beta_for_kl_main, main, read_beta_kl, warn_if_extrapolated
from rlhfkit.dpo.config import DPOConfig, LossName, check_loss_options
from rlhfkit.dpo.objective import (PAIR_LOSSES, Pair, PairLogps, PairLoss, as_pairs, collate_pairs, encode_pairs,
                                   pair_metrics, preference_objective, shares_first_token)
from rlhfkit.dpo.offline import Setup, finish, load_pair_records, run_dpo, sampled_kl, setup, train_round
from rlhfkit.dpo.online import online_round_records, run_online
from rlhfkit.dpo.refcache import attach_ref_logps, cache_key, compute_ref_logps
from rlhfkit.logprobs import Reference
from rlhfkit.logprobs import batch_token_logprobs as response_token_logps  # the name DPO code used before

__all__ = ["PAIR_LOSSES", "BetaForKLArgs", "DPOConfig", "LossName", "Pair", "PairLogps", "PairLoss", "Reference",
           "Setup", "as_pairs", "attach_ref_logps", "beta_for_kl_main", "cache_key", "check_loss_options",
           "collate_pairs", "compute_ref_logps", "encode_pairs", "finish", "load_pair_records", "main",
           "online_round_records", "pair_metrics", "preference_objective", "read_beta_kl", "response_token_logps",
           "run_dpo", "run_online", "sampled_kl", "setup", "shares_first_token", "train_round",
           "warn_if_extrapolated"]
