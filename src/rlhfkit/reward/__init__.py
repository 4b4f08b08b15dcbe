"""Reward model: a scalar head on a language-model trunk, trained on pairwise preferences or K-way rankings.

The model is a Hugging Face `AutoModelForSequenceClassification` with num_labels=1 (for Llama:
LlamaForSequenceClassification, whose `score` head maps a hidden state to one number), initialised from the SFT
model directory by default, or from any causal LM or encoder. Its input is prompt + response tokenised apart
exactly as in SFT (`rlhfkit.data.encode_pair`, EOS appended), and the reward is read at the last real token —
the EOS (InstructGPT sec. 3.5). Losses (docs/design.md, `rlhfkit.losses`):

    Bradley-Terry    loss(x) = 1/C(K,2) * sum_{i<j} -log sigma(r(x, y_i) - r(x, y_j) - m_ij)   (InstructGPT eq. 1)
    Plackett-Luce    loss(x) = -sum_k log( exp r_k / sum_{j: rank_j >= rank_k} exp r_j )

with responses best first; pairs of tied responses (equal rank) are left out of Bradley-Terry, and a tied group
shares one Plackett-Luce denominator (Breslow's approximation). All C(K, 2) pairs of one prompt live in the same batch: each of the K responses
goes through the model once and the pairs are formed from the K rewards (InstructGPT: K forward passes, not
C(K, 2) * 2). A preference pair is the case K = 2. `batch_size` counts prompts (groups), not pairs. By default
a group is also one row (`rlhfkit.data.packing`): the prompt runs once and the K responses follow it under a 4D
attention mask, each reward read at its own EOS (exact; `--no-shared-prefix` or an encoder trunk: one row per
response).

Departures from the paper / from Hugging Face:
- transformers' sequence-classification models pick the rightmost token that is not `pad_token_id`; when
  pad == eos (most causal LMs) that skips the EOS we want. `reward_at_last_token` runs the trunk, finds the last
  real token from the attention mask (left or right padding) and applies the `score` head there. A saved reward
  model is made to read right in plain transformers too: its tokenizer appends the EOS and pads with a token of
  its own (docs/formats.md, "Reward-model directories").
- Encoders (BERT-like, e.g. all-MiniLM-L6-v2) have no `score` head: their own classification forward pools the
  first ([CLS]) token, which attends to the whole text in both directions; we use it as is, right-aligned.
- The optional margin m_ij = margin * max(0, s_i - s_j) (Llama 2's margin from rating gaps) is taken from the
  records' scores: a ranking's `scores` (else its Likert scores), a preference's `score_chosen` / `score_rejected`
  (UltraFeedback, SHP); a score gap that contradicts the ranking gives no margin.
- A ranking whose responses repeat (identical token ids, e.g. after truncation) keeps the best-ranked copy and
  drops the rest (counted): a pair of identical texts carries no preference.

The saved model reloads with `AutoModelForSequenceClassification.from_pretrained(dir)`. Its config carries
`rlhfkit_reward_norm = {"mean", "std", "n", "source"}` (normalised reward = (r - mean) / std, measured on
held-out responses or a reference file) and `rlhfkit_encoding = {"max_length", "max_prompt_length"}`.

    model.py    the model: rewards at the last token / of packed rows, load, save, reload
    groups.py   preference / ranking records -> Groups (one prompt's responses tokenised, best first)
    score.py    scoring, the reward normalisation, the `Scorer` of a saved model, reports; `rm eval`, `rm score`
    train.py    batches, the ranking losses (`RANKING_LOSSES`), the objective; `rm train`
    cli.py      the `rlhfkit rm train | eval | score` entry points

Imports run one way: model, groups <- score <- train <- cli.
"""

from __future__ import annotations

from rlhfkit.reward.cli import eval_main, score_main, train_main
from rlhfkit.reward.groups import Group, encode_groups
from rlhfkit.reward.model import (RewardModel, last_token_index, load_reward_model, reward_at_last_token,
                                  reward_tokenizer)
from rlhfkit.reward.score import RMEvalConfig, load_reward_scorer, run_rm_eval
from rlhfkit.reward.train import (RMConfig, collate_groups, group_table, ranking_losses, reward_objective,
                                  run_rm_train)

__all__ = [
    "Group",
    "RMConfig",
    "RMEvalConfig",
    "RewardModel",
    "collate_groups",
    "encode_groups",
    "eval_main",
    "group_table",
    "last_token_index",
    "load_reward_model",
    "load_reward_scorer",
    "ranking_losses",
    "reward_at_last_token",
    "reward_objective",
    "reward_tokenizer",
    "run_rm_eval",
    "run_rm_train",
    "score_main",
    "train_main",
]
