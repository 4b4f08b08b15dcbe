"""Reward model: a scalar head on a language-model trunk, trained on pairwise preferences or K-way rankings.

The model is a Hugging Face `AutoModelForSequenceClassification` with num_labels=1 (for Llama:
LlamaForSequenceClassification, whose `score` head maps a hidden state to one number), initialised from the SFT
model directory by default, or from any causal LM or encoder. Its input is prompt + response tokenised apart
exactly as in SFT (`rlhfkit.data.encode_pair`, EOS appended), and the reward is read at the last real token —
the EOS (InstructGPT sec. 3.5). Losses (DESIGN.md, `rlhfkit.losses`):

    Bradley-Terry    loss(x) = 1/C(K,2) * sum_{i<j} -log sigma(r(x, y_i) - r(x, y_j) - m_ij)   (InstructGPT eq. 1)
    Plackett-Luce    loss(x) = -sum_k log( exp r_k / sum_{j>=k} exp r_j )

with responses best first. All C(K, 2) pairs of one prompt live in the same batch: each of the K responses
goes through the model once and the pairs are formed from the K rewards (InstructGPT: K forward passes, not
C(K, 2) * 2). A preference pair is the case K = 2. `batch_size` counts prompts (groups), not pairs. By default
a group is also one row (`rlhfkit.prefix`): the prompt runs once and the K responses follow it under a 4D
attention mask, each reward read at its own EOS (exact; `--no-shared-prefix` or an encoder trunk: one row per
response).

Departures from the paper / from Hugging Face:
- transformers' sequence-classification models pick the rightmost token that is not `pad_token_id`; when
  pad == eos (most causal LMs) that skips the EOS we want. `reward_at_last_token` runs the trunk, finds the last
  real token from the attention mask (left or right padding) and applies the `score` head there.
- Encoders (BERT-like, e.g. all-MiniLM-L6-v2) have no `score` head: their own classification forward pools the
  first ([CLS]) token, which attends to the whole text in both directions; we use it as is, right-aligned.
- The optional margin m_ij = margin * max(0, likert_i - likert_j) (Llama 2's margin from rating gaps) is taken
  from Likert scores of rankings; a score gap that contradicts the ranking gives no margin.
- A ranking whose responses repeat (identical token ids, e.g. after truncation) keeps the best-ranked copy and
  drops the rest (counted): a pair of identical texts carries no preference.

The saved model reloads with `AutoModelForSequenceClassification.from_pretrained(dir)`. Its config carries
`rlhfkit_reward_norm = {"mean", "std", "n", "source"}` (normalised reward = (r - mean) / std, measured on
held-out responses or a reference file) and `rlhfkit_encoding = {"max_length", "max_prompt_length"}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as config_lib
from rlhfkit import prefix
from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import (Encoded, TokenBatch, TruncationStats, collate, encode_pair, load_train_eval, read_records,
                          split_summary)
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.generation import positions
from rlhfkit.losses import bradley_terry_loss, plackett_luce_loss
from rlhfkit.ops import masked_mean
from rlhfkit.prefix import PrefixBatch
from rlhfkit.tracking import Run, say

Scorer = Callable[[list[str], list[str]], list[float]]


# ------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RMConfig:
    """rlhfkit rm train: a reward model from pairwise preferences or K-way rankings."""

    data: DataConfig = field(default_factory=DataConfig)
    """Preferences or rankings (JSONL) and the length policy for prompt + response."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of data.train / data.eval; `auto` reads it from the first JSONL record."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="runs/sft/model"))
    """Trunk: the SFT model directory (default), `tiny` (random), `smollm2`, any causal LM or encoder dir / id."""
    loss: Literal["bt", "pl"] = "bt"
    """`bt`: Bradley-Terry, mean over the C(K,2) pairs of each prompt; `pl`: Plackett-Luce listwise."""
    margin: float = 0.0
    """Bradley-Terry margin per Likert point: m = margin * max(0, likert_chosen - likert_rejected); 0: none."""
    norm_reference: str | None = None
    """Candidates / preferences / rankings JSONL whose responses set the reward mean and std; default: held-out
    responses (train responses when nothing is held out)."""
    calibration_bins: int = 5
    """Bins of the held-out calibration table."""
    shared_prefix: bool = True
    """Run each prompt's K responses as one row, the prompt once (rlhfkit.prefix; exact). Causal trunks with
    sdpa / eager attention only; encoders and other attention fall back to one row per response."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, epochs=1))
    """Loop settings; batch_size counts prompts (all of a prompt's responses share its batch)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5))
    """Optimizer settings."""
    out: str = "runs/rm"
    """Run directory; the reward model is saved to <out>/model."""


@dataclass(frozen=True)
class RMEvalConfig:
    """rlhfkit rm eval: held-out accuracy, mean margin and calibration of a saved reward model."""

    model: str = "runs/rm/model"
    """Saved reward-model directory."""
    data: str = ""
    """Preferences or rankings JSONL (every C(K,2) pair of a ranking counts)."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of `data`; `auto` reads it from the first record."""
    batch_size: int = 16
    """Responses scored per forward pass."""
    calibration_bins: int = 5
    """Bins of the calibration table."""
    out: str | None = None
    """Also write the report as JSON here."""


@dataclass(frozen=True)
class RMScoreConfig:
    """rlhfkit rm score: add `"scores": [...]` (one per response) to each record of a candidates file."""

    model: str = "runs/rm/model"
    """Saved reward-model directory."""
    data: str = ""
    """Candidates JSONL ({"prompt", "responses": [...]})."""
    out: str = ""
    """Where to write the scored candidates JSONL."""
    normalize: bool = True
    """Write normalised rewards (r - mean) / std from the model's config; False: raw head outputs."""
    batch_size: int = 16
    """Responses scored per forward pass."""


# ------------------------------------------------------------------------------------------------- the model
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last real token, for left or right padding. (B, T) -> (B,) long."""
    cols = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (cols * attention_mask.long()).argmax(-1)  # (B,) the rightmost column where the mask is 1


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the front (order kept), padding to the end. (B, T) -> (B, T), (B, T)."""
    order = torch.argsort(1 - attention_mask.long(), dim=-1, stable=True)  # (B, T) real tokens first
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


def reward_at_last_token(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per sequence, read at the last real token (the EOS). (B, T), (B, T) -> (B,) float32.

    Decoder trunks (`score` head): trunk hidden states (B, T, H), gathered at the last attended column, then the
    head — never at "the last token that is not pad", which is wrong when pad == eos. Position ids ignore left
    padding. Encoders (no `score` head) use their own pooled classification output on right-aligned input.
    """
    head = getattr(model, "score", None)
    if head is None:
        input_ids, attention_mask = right_align(input_ids, attention_mask)
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()  # (B,)
    trunk = getattr(model, model.base_model_prefix)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   use_cache=False).last_hidden_state  # (B, T, H); no KV cache: nothing is generated
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last_hidden = hidden[rows, last_token_index(attention_mask)]  # (B, H)
    return head(last_hidden)[:, 0].float()  # (B,)


def packed_rewards(model: Any, batch: PrefixBatch) -> torch.Tensor:
    """Rewards of a shared-prefix batch (rlhfkit.prefix): the trunk runs once per prompt, the head at each
    response's last token. -> (G, B) float32 (entries of absent sides are meaningless; see batch.lengths)."""
    trunk = getattr(model, model.base_model_prefix)
    hidden = prefix.hidden_states(trunk, batch)  # (B, T, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[None, :].expand_as(batch.last_cols)  # (G, B)
    return model.score(hidden[rows, batch.last_cols])[..., 0].float()  # (G, B)


def supports_packing(model: Any) -> bool:
    """Shared-prefix packing needs a causal trunk with a `score` head and 4D-mask attention (not encoders)."""
    return getattr(model, "score", None) is not None and prefix.supports_shared_prefix(model)


class RewardModel(torch.nn.Module):
    """A sequence-classification model whose forward returns the rewards of a batch: (N,) for a TokenBatch,
    (G, B) for a PrefixBatch.

    The training loop prepares (e.g. DDP-wraps) this module, so the reward is computed inside its forward and
    gradients synchronise across processes.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, batch: TokenBatch | PrefixBatch) -> torch.Tensor:
        if isinstance(batch, PrefixBatch):
            return packed_rewards(self.model, batch)
        return reward_at_last_token(self.model, batch.input_ids, batch.attention_mask)


def reward_tokenizer(tokenizer: Any) -> Any:
    """Make a tokenizer usable for rewards: encoders without EOS/BOS use [SEP]/[CLS]; a pad token always."""
    if tokenizer.eos_token_id is None and getattr(tokenizer, "sep_token", None):
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.bos_token_id is None and getattr(tokenizer, "cls_token", None):
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.eos_token_id is None:
        raise RlhfkitError("the reward model's tokenizer has no EOS (or [SEP]) token to read the reward at")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # masks come from lengths, so pad == eos is safe
    return tokenizer


def load_reward_model(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(AutoModelForSequenceClassification with one label, tokenizer) for a ModelConfig; the head is new."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import _dtype, build_tiny, load_tokenizer, smollm2_dir

    torch.manual_seed(seed)  # the freshly initialised head is seeded too
    if cfg.name == "tiny":
        tokenizer = reward_tokenizer(load_tokenizer(cfg.tokenizer or "gpt2"))
        lm_config = build_tiny(tokenizer, cfg.tiny, seed).config
        lm_config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(lm_config)
    else:
        name = str(smollm2_dir()) if cfg.name == "smollm2" else cfg.name
        kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
        except (OSError, ValueError) as err:
            raise RlhfkitError(f"could not load a reward-model trunk from '{name}': {err}") from None
        tokenizer = reward_tokenizer(load_tokenizer(cfg.tokenizer or name))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(_dtype(cfg.dtype)), tokenizer


def save_reward_model(model: Any, tokenizer: Any, out_dir: str | Path, norm: dict, encoding: dict) -> Path:
    """save_pretrained with the reward normalisation and the tokenisation lengths in the model's config."""
    from rlhfkit.models import save_model

    model.config.rlhfkit_reward_norm = dict(norm)
    model.config.rlhfkit_encoding = dict(encoding)
    model.config.pad_token_id = tokenizer.pad_token_id
    return save_model(model, tokenizer, out_dir)


def load_saved_reward_model(path: str | Path) -> tuple[Any, Any]:
    """A reward model saved by `rm train` (or any 1-label sequence-classification dir), in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except OSError as err:
        raise RlhfkitError(f"could not load a reward model from '{path}': {err}") from None
    if model.config.num_labels != 1:
        raise RlhfkitError(f"'{path}' has {model.config.num_labels} labels; a reward model has one")
    return model.eval(), reward_tokenizer(tokenizer)


# ------------------------------------------------------------------------------------------ data -> groups
@dataclass
class Group:
    """One prompt's responses as the reward model sees them, best first (K = 2 for a preference pair)."""

    examples: list[Encoded]
    likert: list[float] | None = None  # one Likert score per response, same order, when the record has them


@dataclass
class GroupStats:
    """What encoding dropped: repeated responses within a record and records left with < 2 responses."""

    truncation: TruncationStats = field(default_factory=TruncationStats)
    duplicates: int = 0
    too_few: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"truncation": self.truncation.as_dict(), "duplicate_responses_dropped": self.duplicates,
                "records_dropped_too_few_responses": self.too_few}


def ranked_responses(rec: dict) -> tuple[list[str], list[float] | None]:
    """A preference or ranking record's responses best first, and their Likert scores (or None)."""
    if "ranking" not in rec:
        return [rec["chosen"], rec["rejected"]], None
    responses = [rec["responses"][i] for i in rec["ranking"]]
    likert = rec.get("likert")
    return responses, ([float(likert[i]) for i in rec["ranking"]] if likert else None)


def encode_groups(tokenizer: Any, records: Sequence[dict], data: DataConfig) -> tuple[list[Group], GroupStats]:
    """Tokenise preference / ranking records into Groups under the DataConfig's length policy."""
    stats = GroupStats()
    groups = []
    for rec in records:
        responses, likert = ranked_responses(rec)
        kept: list[Encoded] = []
        kept_likert: list[float] = []
        for k, response in enumerate(responses):
            enc = encode_pair(tokenizer, rec["prompt"], response, data.max_length, data.max_prompt_length,
                              data.truncation, stats.truncation)
            if enc is None:
                continue
            if any(enc.input_ids == other.input_ids for other in kept):
                stats.duplicates += 1
                continue
            kept.append(enc)
            kept_likert.append(likert[k] if likert else math.nan)
        if len(kept) < 2:
            stats.too_few += 1
            continue
        groups.append(Group(kept, kept_likert if likert else None))
    return groups, stats


def collate_groups(groups: Sequence[Group], pad_id: int, shared_prefix: bool = False) -> TokenBatch | PrefixBatch:
    """Flatten groups into one right-padded TokenBatch (N = sum of K, T); extras give each row's group index,
    its rank within the group (0 = best) and its Likert score (nan when absent), all (N,).
    shared_prefix: one PrefixBatch row per group instead (prompt once, then its K responses); extras["likert"]
    is then the (B, K) best-first table."""
    if shared_prefix:
        batch = prefix.collate_groups([g.examples for g in groups], pad_id)
        K = batch.lengths.shape[0]
        batch.extras["likert"] = torch.tensor(
            [[g.likert[k] if g.likert and k < len(g.likert) else math.nan for k in range(K)] for g in groups],
            dtype=torch.float32)  # (B, K)
        return batch
    batch = collate([e for g in groups for e in g.examples], pad_id, "right")
    batch.extras["group"] = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.examples])  # (N,)
    batch.extras["rank"] = torch.tensor([k for g in groups for k in range(len(g.examples))])  # (N,)
    batch.extras["likert"] = torch.tensor(
        [g.likert[k] if g.likert else math.nan for g in groups for k in range(len(g.examples))],
        dtype=torch.float32)  # (N,)
    return batch


# ------------------------------------------------------------------------------------------------- losses
def group_table(values: torch.Tensor, group: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter per-response values (N,) into a best-first table (G, K) and its mask (G, K) bool."""
    G, K = int(group.max()) + 1, int(rank.max()) + 1
    table = values.new_zeros((G, K)).index_put((group, rank), values)  # (G, K), keeps the gradient
    mask = torch.zeros((G, K), dtype=torch.bool, device=values.device).index_put(
        (group, rank), torch.ones_like(group, dtype=torch.bool))  # (G, K)
    return table, mask


def ranking_losses(
    rewards: torch.Tensor, mask: torch.Tensor, loss: str = "bt", likert: torch.Tensor | None = None,
    margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-prompt loss (G,) from a best-first reward table (G, K) with mask (G, K); see the module docstring.

    `bt`: Bradley-Terry averaged over each prompt's valid pairs i < j; `pl`: Plackett-Luce. likert (G, K), nan
    where unknown, gives the margin. Metrics are over all valid pairs (ties count half in the accuracy).
    """
    K = rewards.shape[1]
    i, j = torch.triu_indices(K, K, offset=1, device=rewards.device)  # (C,) each: every pair, better first
    chosen, rejected = rewards[:, i], rewards[:, j]  # (G, C)
    pair_mask = mask[:, i] & mask[:, j]  # (G, C)
    if loss == "pl":
        losses = plackett_luce_loss(rewards, mask)  # (G,)
    elif loss == "bt":
        pair_margin = None
        if margin and likert is not None:
            pair_margin = margin * (likert[:, i] - likert[:, j]).nan_to_num(0.0).clamp(min=0.0)  # (G, C)
        losses = masked_mean(bradley_terry_loss(chosen, rejected, pair_margin), pair_mask, dim=-1)  # (G,)
    else:
        raise ValueError(f"unknown reward-model loss {loss!r}; expected 'bt' or 'pl'")
    with torch.no_grad():
        gap = chosen - rejected  # (G, C)
        right = (gap > 0).float() + 0.5 * (gap == 0).float()  # (G, C)
        metrics = {"rewards/chosen": float(masked_mean(chosen, pair_mask)),
                   "rewards/rejected": float(masked_mean(rejected, pair_mask)),
                   "rewards/accuracy": float(masked_mean(right, pair_mask)),
                   "rewards/margin": float(masked_mean(gap, pair_mask))}
    return losses, metrics


def reward_table(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewards of a batch of groups as best-first tables: rewards (G, K), mask (G, K) bool, likert (G, K)."""
    rewards = model(batch)
    if isinstance(batch, PrefixBatch):  # (K, G): side k of group g
        return rewards.T, (batch.lengths > 0).T, batch.extras["likert"].to(rewards.dtype)
    group, rank = batch.extras["group"], batch.extras["rank"]
    table, mask = group_table(rewards, group, rank)  # (G, K)
    likert, _ = group_table(batch.extras["likert"].to(rewards.dtype), group, rank)  # (G, K)
    return table, mask, likert


def reward_objective(loss: str = "bt", margin: float = 0.0) -> Callable[[Any, TokenBatch | PrefixBatch], tuple]:
    """The objective `loop.fit` minimises: each response scored once, pairs formed from the K rewards."""

    def objective(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, dict[str, float]]:
        table, mask, likert = reward_table(model, batch)  # (G, K) each
        losses, metrics = ranking_losses(table, mask, loss, likert, margin)  # (G,)
        return losses.mean(), metrics

    return objective


# ------------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def score_encoded(model: Any, examples: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                  device: Any = None) -> list[float]:
    """Raw rewards of encoded examples, in their order; batched by length so little padding is computed."""
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = [0.0] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([examples[i] for i in chunk], pad_id).to(device)
        for i, r in zip(chunk, reward_at_last_token(model, batch.input_ids, batch.attention_mask).tolist()):
            out[i] = r
    model.train(was_training)
    return out


def score_groups(model: Any, groups: Sequence[Group], pad_id: int, batch_size: int = 16) -> list[list[float]]:
    """Raw rewards per group, best first."""
    flat = score_encoded(model, [e for g in groups for e in g.examples], pad_id, batch_size)
    out, start = [], 0
    for g in groups:
        out.append(flat[start : start + len(g.examples)])
        start += len(g.examples)
    return out


def pairs_from_groups(group_rewards: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """(chosen, rejected) rewards of every pair i < j of every best-first group."""
    chosen, rejected = [], []
    for rewards in group_rewards:
        for i in range(len(rewards)):
            for j in range(i + 1, len(rewards)):
                chosen.append(rewards[i])
                rejected.append(rewards[j])
    return chosen, rejected


def pair_report(group_rewards: Sequence[Sequence[float]], bins: int = 5) -> dict[str, Any]:
    """Held-out pairwise accuracy, mean margin and calibration table (rlhfkit.stats) over all pairs."""
    from rlhfkit.stats import calibration_table, pairwise_accuracy

    chosen, rejected = pairs_from_groups(group_rewards)
    if not chosen:
        return {}
    return {**pairwise_accuracy(chosen, rejected), "calibration": calibration_table(chosen, rejected, bins)}


def format_report(report: dict[str, Any]) -> str:
    """The accuracy line and the calibration table as text for a terminal."""
    if not report:
        return "no held-out pairs"
    lines = [f"accuracy {report['accuracy']:.3f} over {report['n']} pairs ({report['ties']} ties), "
             f"mean margin {report['mean_margin']:.3f}",
             "confidence bin      n  predicted  observed"]
    lines += [f"[{r['bin_low']:.2f}, {r['bin_high']:.2f}]  {r['n']:5d}  {r['predicted']:9.3f}  {r['observed']:8.3f}"
              for r in report["calibration"]]
    return "\n".join(lines)


def reward_norm(rewards: Sequence[float], source: str) -> dict[str, Any]:
    """Mean and (population) std of reference rewards; std 1 when they are all equal."""
    values = torch.tensor(list(rewards), dtype=torch.float64)
    if values.numel() == 0:
        raise RlhfkitError(f"no responses to measure the reward normalisation on ({source})")
    std = float(values.std(unbiased=False))
    return {"mean": float(values.mean()), "std": std if std > 1e-8 else 1.0, "n": int(values.numel()),
            "source": source}


def load_reward_scorer(path: str | Path, normalize: bool = True, batch_size: int = 16,
                       device: Any = None) -> Scorer:
    """scorer(prompts, responses) -> one reward per pair, normalised (r - mean) / std by default."""
    model, tokenizer = load_saved_reward_model(path)
    if device is not None:
        model.to(device)
    norm = getattr(model.config, "rlhfkit_reward_norm", None)
    if normalize and not norm:
        raise RlhfkitError(f"'{path}' stores no reward normalisation (config.rlhfkit_reward_norm); "
                           "load it with normalize=False or train it with `rlhfkit rm train`")
    encoding = getattr(model.config, "rlhfkit_encoding", None) or {"max_length": 512, "max_prompt_length": 256}
    mean, std = (norm["mean"], norm["std"]) if normalize else (0.0, 1.0)

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        examples = [_encode_for_scoring(tokenizer, p, r, encoding) for p, r in zip(prompts, responses)]
        raw = score_encoded(model, examples, tokenizer.pad_token_id, batch_size)
        return [(r - mean) / std for r in raw]

    return scorer


def _encode_for_scoring(tokenizer: Any, prompt: str, response: str, encoding: dict) -> Encoded:
    """Every response gets a score, so over-long text is truncated (never dropped)."""
    enc = encode_pair(tokenizer, prompt, response, encoding["max_length"], encoding["max_prompt_length"], "truncate")
    if enc is None:
        raise RlhfkitError(f"response {response[:40]!r} has no tokens left to score after truncation")
    return enc


# -------------------------------------------------------------------------------------------- file kinds
def detect_kind(source: str, fmt: str, allowed: Sequence[str]) -> str:
    """The record kind of `source`: `fmt` unless it is `auto`, else read from the first JSONL record."""
    if fmt != "auto":
        return fmt
    path = Path(source)
    if not source or not path.exists() or path.suffix == ".parquet":
        raise RlhfkitError(f"cannot tell the record kind of '{source}': pass --format {'|'.join(allowed)}")
    lineno, line = 0, ""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                break
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return allowed[0]  # the reader reports the malformed line with file:line
    kind = ("rankings" if "ranking" in rec else "preferences" if "chosen" in rec else
            "candidates" if "responses" in rec else None) if isinstance(rec, dict) else None
    if kind not in allowed:
        raise DataError(source, lineno, f"expected {' or '.join(allowed)} records (see DESIGN.md file formats)")
    return kind


def reference_responses(source: str) -> list[tuple[str, str]]:
    """(prompt, response) of every response in a candidates, preferences or rankings file."""
    kind = detect_kind(source, "auto", ("candidates", "preferences", "rankings"))
    out = []
    for rec in read_records(source, kind):
        responses = [rec["chosen"], rec["rejected"]] if kind == "preferences" else rec["responses"]
        out += [(rec["prompt"], r) for r in responses]
    return out


# -------------------------------------------------------------------------------------------------- stages
def _check_margin(cfg: RMConfig, groups: Sequence[Group]) -> None:
    if cfg.margin < 0:
        raise RlhfkitError(f"--margin must be >= 0, got {cfg.margin}")
    if cfg.margin and cfg.loss != "bt":
        raise RlhfkitError("--margin applies to the Bradley-Terry loss only (--loss bt)")
    if cfg.margin and not any(g.likert for g in groups):
        raise RlhfkitError("--margin needs rankings with Likert scores ('likert'); the training data has none")


def _norm_for(cfg: RMConfig, model: Any, tokenizer: Any, held_rewards: list[list[float]], train: list[Group],
              batch_size: int) -> dict[str, Any]:
    """Reward mean/std over the reference file, else the held-out responses, else the training responses."""
    pad = tokenizer.pad_token_id
    if cfg.norm_reference:
        encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
        examples = [_encode_for_scoring(tokenizer, p, r, encoding) for p, r in reference_responses(cfg.norm_reference)]
        return reward_norm(score_encoded(model, examples, pad, batch_size), cfg.norm_reference)
    if held_rewards:
        return reward_norm([r for g in held_rewards for r in g], "held-out responses")
    return reward_norm([r for g in score_groups(model, train, pad, batch_size) for r in g], "training responses")


def run_rm_train(cfg: RMConfig) -> dict[str, Any]:
    """Train, evaluate on held-out pairs, measure the normalisation, save; returns a summary."""
    from rlhfkit.loop import fit, make_accelerator

    accelerator = make_accelerator(cfg.train)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)
    kind = detect_kind(cfg.data.train, cfg.format, ("preferences", "rankings"))
    train_recs, eval_recs = load_train_eval(cfg.data, kind, cfg.train.seed)  # held out by prompt
    model, tokenizer = load_reward_model(cfg.model, cfg.train.seed)
    train, stats = encode_groups(tokenizer, train_recs, cfg.data)
    held, held_stats = encode_groups(tokenizer, eval_recs, cfg.data)
    if not train:
        raise RlhfkitError(f"no training {kind} left after encoding ({stats.as_dict()})")
    _check_margin(cfg, train)
    split = split_summary(train_recs, eval_recs)
    say(f"rm: {len(train)} records of {split['train_prompts']} prompts / {sum(len(g.examples) for g in train)} "
        f"responses to train on ({stats.truncation.summary()}; {stats.duplicates} repeated responses and "
        f"{stats.too_few} records with < 2 responses dropped), {len(held)} records of {split['eval_prompts']} "
        "prompts held out")
    pad = tokenizer.pad_token_id
    shared = cfg.shared_prefix and supports_packing(model)
    rm = RewardModel(model)
    result = fit(reward_objective(cfg.loss, cfg.margin), rm, train, lambda gs: collate_groups(gs, pad, shared),
                 cfg.train, cfg.optim, run, accelerator, eval_examples=held or None)
    model = accelerator.unwrap_model(rm).model
    held_rewards = score_groups(model, held, pad, cfg.train.batch_size) if held else []
    report = pair_report(held_rewards, cfg.calibration_bins)
    norm = _norm_for(cfg, model, tokenizer, held_rewards, train, cfg.train.batch_size)
    summary = {"step": result.step, "status": result.status, "held_out": report, "reward_norm": norm,
               "data": {"kind": kind, "train": stats.as_dict(), "eval": held_stats.as_dict(),
                        "split": split},
               "tokens_per_s": result.tokens_per_second, "seconds": result.seconds, "model": str(run.dir / "model")}
    if accelerator.is_main_process:
        encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
        save_reward_model(model, tokenizer, run.dir / "model", norm, encoding)
        run.write_json("summary.json", summary)
    run.close()
    return summary


def run_rm_eval(cfg: RMEvalConfig) -> dict[str, Any]:
    """Accuracy, mean margin and calibration of a saved reward model on a preferences / rankings file."""
    model, tokenizer = load_saved_reward_model(cfg.model)
    kind = detect_kind(cfg.data, cfg.format, ("preferences", "rankings"))
    encoding = getattr(model.config, "rlhfkit_encoding", None) or {"max_length": 512, "max_prompt_length": 256}
    data = DataConfig(max_length=encoding["max_length"], max_prompt_length=encoding["max_prompt_length"])
    groups, stats = encode_groups(tokenizer, read_records(cfg.data, kind), data)
    report = pair_report(score_groups(model, groups, tokenizer.pad_token_id, cfg.batch_size), cfg.calibration_bins)
    report = {**report, "data": stats.as_dict(), "model": str(cfg.model), "file": cfg.data}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=2))
    return report


def run_rm_score(cfg: RMScoreConfig) -> int:
    """Write the candidates file with `"scores"` added to every record; returns the number of records."""
    from rlhfkit.data import write_jsonl

    if not cfg.out:
        raise RlhfkitError("rm score needs --out (where to write the scored candidates)")
    records = read_records(cfg.data, "candidates")
    scorer = load_reward_scorer(cfg.model, normalize=cfg.normalize, batch_size=cfg.batch_size)
    flat = scorer([r["prompt"] for r in records for _ in r["responses"]], [x for r in records for x in r["responses"]])
    out, start = [], 0
    for rec in records:
        out.append({**rec, "scores": flat[start : start + len(rec["responses"])]})
        start += len(rec["responses"])
    return write_jsonl(cfg.out, out)


def train_main(argv: list[str]) -> int:
    summary = run_rm_train(config_lib.parse(RMConfig, argv, prog="rlhfkit rm train"))
    say(format_report(summary["held_out"]))
    say(f"rm: reward mean {summary['reward_norm']['mean']:.4f}, std {summary['reward_norm']['std']:.4f} "
        f"({summary['reward_norm']['source']}); model saved to {summary['model']}")
    return 0


def eval_main(argv: list[str]) -> int:
    cfg = config_lib.parse(RMEvalConfig, argv, prog="rlhfkit rm eval")
    report = run_rm_eval(cfg)
    say(format_report(report))
    print(json.dumps({k: v for k, v in report.items() if k != "calibration"}))
    return 0


def score_main(argv: list[str]) -> int:
    cfg = config_lib.parse(RMScoreConfig, argv, prog="rlhfkit rm score")
    n = run_rm_score(cfg)
    say(f"rm score: {n} records scored ({'normalised' if cfg.normalize else 'raw'} rewards) -> {cfg.out}")
    return 0
