"""Scoring with a reward model, and its reports: raw rewards of encoded responses, the reward normalisation,
the `Scorer` of a saved model, held-out pairwise accuracy / calibration, and the `rm eval` / `rm score` stages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlhfkit.config import DataConfig
from rlhfkit.data import (Encoded, check_output, collate, detect_kind, encode_pair, read_located, read_records,
                          write_jsonl, write_text)
from rlhfkit.errors import RlhfkitError
from rlhfkit.logprobs import eval_mode
from rlhfkit.reward.groups import Group, encode_groups
from rlhfkit.reward.model import load_saved_reward_model, reward_at_last_token

if TYPE_CHECKING:
    from rlhfkit.protocols import Scorer

DEFAULT_ENCODING = {"max_length": 512, "max_prompt_length": 256}  # for models saved without rlhfkit_encoding


# ------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RMEvalConfig:
    """rlhfkit rm eval: held-out accuracy, mean margin and calibration of a saved reward model."""

    model: str = "runs/sentiment-tiny/rm/model"
    """Saved reward-model directory."""
    data: str = ""
    """Preferences or rankings: JSONL, parquet or a `datasets` name (every C(K,2) pair of a ranking counts, except
    tied pairs)."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of `data`; `auto` reads it from the first record."""
    columns: str = ""
    """Read fields from other columns, as `--data.columns` of rm train: `prompt=history,responses=a+b,...`."""
    batch_size: int = 16
    """Responses scored per forward pass."""
    calibration_bins: int = 5
    """Bins of the calibration table."""
    out: str | None = None
    """Also write the report as JSON here."""


@dataclass(frozen=True)
class RMScoreConfig:
    """rlhfkit rm score: add `"scores": [...]` (one per response) to each record of a candidates file."""

    model: str = "runs/sentiment-tiny/rm/model"
    """Saved reward-model directory."""
    data: str = ""
    """Candidates JSONL ({"prompt", "responses": [...]})."""
    out: str = ""
    """Where to write the scored candidates JSONL."""
    normalize: bool = True
    """Write normalised rewards (r - mean) / std from the model's config; False: raw head outputs."""
    batch_size: int = 16
    """Responses scored per forward pass."""


# ------------------------------------------------------------------------------------------------ scoring
@torch.no_grad()
def score_encoded(model: Any, examples: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                  device: Any = None) -> list[float]:
    """Raw rewards of encoded examples, in their order; batched by length so little padding is computed."""
    device = device if device is not None else next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = [0.0] * len(examples)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([examples[i] for i in chunk], pad_id).to(device)
            for i, r in zip(chunk, reward_at_last_token(model, batch.input_ids, batch.attention_mask).tolist()):
                out[i] = r
    return out


def score_groups(model: Any, groups: Sequence[Group], pad_id: int, batch_size: int = 16) -> list[list[float]]:
    """Raw rewards per group, best first."""
    flat = score_encoded(model, [e for g in groups for e in g.examples], pad_id, batch_size)
    out, start = [], 0
    for g in groups:
        out.append(flat[start : start + len(g.examples)])
        start += len(g.examples)
    return out


def encode_for_scoring(tokenizer: Any, prompt: str, response: str, encoding: dict) -> Encoded:
    """Every response gets a score, so over-long text is truncated (never dropped)."""
    enc = encode_pair(tokenizer, prompt, response, encoding["max_length"], encoding["max_prompt_length"], "truncate")
    if enc is None:
        raise RlhfkitError(f"response {response[:40]!r} has no tokens left to score after truncation")
    return enc


def reward_norm(rewards: Sequence[float], source: str) -> dict[str, Any]:
    """Mean and (population) std of reference rewards; std 1 when they are all equal."""
    values = torch.tensor(list(rewards), dtype=torch.float64)
    if values.numel() == 0:
        raise RlhfkitError(f"no responses to measure the reward normalisation on ({source})")
    std = float(values.std(unbiased=False))
    return {"mean": float(values.mean()), "std": std if std > 1e-8 else 1.0, "n": int(values.numel()),
            "source": source}


def reference_responses(source: str) -> list[tuple[str, str]]:
    """(prompt, response) of every response in a candidates, preferences or rankings file (`--norm-reference`;
    its kind is read from its first record)."""
    kind = detect_kind(source, ("candidates", "preferences", "rankings"), unreadable="")
    if not kind:
        raise RlhfkitError(f"--norm-reference {source}: its first record is no candidates, preferences or rankings "
                           "record")
    out = []
    for rec in read_records(source, kind):
        responses = [rec["chosen"], rec["rejected"]] if kind == "preferences" else rec["responses"]
        out += [(rec["prompt"], r) for r in responses]
    return out


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
    encoding = getattr(model.config, "rlhfkit_encoding", None) or DEFAULT_ENCODING
    mean, std = (norm["mean"], norm["std"]) if normalize else (0.0, 1.0)

    def scorer(prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        examples = [encode_for_scoring(tokenizer, p, r, encoding) for p, r in zip(prompts, responses)]
        raw = score_encoded(model, examples, tokenizer.pad_token_id, batch_size)
        return [(r - mean) / std for r in raw]

    return scorer


# ------------------------------------------------------------------------------------------------ reports
def pairs_from_groups(group_rewards: Sequence[Sequence[float]],
                      group_ranks: Sequence[Sequence[int]] | None = None) -> tuple[list[float], list[float]]:
    """(chosen, rejected) rewards of every pair i < j of every best-first group whose ranks differ (tied
    responses are no pair); group_ranks: each group's ranks (0 = best), None: no ties."""
    chosen, rejected = [], []
    for g, rewards in enumerate(group_rewards):
        ranks = group_ranks[g] if group_ranks is not None else range(len(rewards))
        for i in range(len(rewards)):
            for j in range(i + 1, len(rewards)):
                if ranks[i] < ranks[j]:
                    chosen.append(rewards[i])
                    rejected.append(rewards[j])
    return chosen, rejected


def pair_report(group_rewards: Sequence[Sequence[float]], bins: int = 5,
                group_ranks: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Held-out pairwise accuracy, mean margin and calibration table (rlhfkit.stats) over all pairs of
    responses ranked apart (group_ranks: each group's ranks, tied responses sharing one; None: no ties)."""
    from rlhfkit.stats import calibration_table, pairwise_accuracy

    chosen, rejected = pairs_from_groups(group_rewards, group_ranks)
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


# -------------------------------------------------------------------------------------------------- stages
def run_rm_eval(cfg: RMEvalConfig) -> dict[str, Any]:
    """Accuracy, mean margin and calibration of a saved reward model on a preferences / rankings file."""
    if not cfg.data:
        raise RlhfkitError("rm eval needs --data (a preferences or rankings file)")
    if cfg.out:
        check_output(cfg.out)
    kind = detect_kind(cfg.data, ("preferences", "rankings"), cfg.format, columns=cfg.columns)
    records = read_records(cfg.data, kind, cfg.columns)  # bad data fails before the model loads
    model, tokenizer = load_saved_reward_model(cfg.model)
    encoding = getattr(model.config, "rlhfkit_encoding", None) or DEFAULT_ENCODING
    data = DataConfig(max_length=encoding["max_length"], max_prompt_length=encoding["max_prompt_length"])
    groups, stats = encode_groups(tokenizer, records, data)
    rewards = score_groups(model, groups, tokenizer.pad_token_id, cfg.batch_size)
    report = pair_report(rewards, cfg.calibration_bins, [g.ranks for g in groups])
    report = {**report, "data": stats.as_dict(), "model": str(cfg.model), "file": cfg.data}
    if cfg.out:
        write_text(cfg.out, json.dumps(report, indent=2))
    return report


def run_rm_score(cfg: RMScoreConfig) -> int:
    """Write the candidates file with `"scores"` added to every record; returns the number of records. A
    non-finite reward (a broken model) is refused, naming the record's file:line."""
    from rlhfkit.labeling.gold import checked_scores

    if not cfg.data:
        raise RlhfkitError("rm score needs --data (a candidates file)")
    if not cfg.out:
        raise RlhfkitError("rm score needs --out (where to write the scored candidates)")
    check_output(cfg.out)
    located = read_located(cfg.data, "candidates")  # bad data fails before the model loads
    records = [rec for rec, _ in located]
    scorer = load_reward_scorer(cfg.model, normalize=cfg.normalize, batch_size=cfg.batch_size)
    flat = checked_scores(scorer, [r["prompt"] for r in records for _ in r["responses"]],
                          [x for r in records for x in r["responses"]], f"rm:{cfg.model}",
                          [where for rec, where in located for _ in rec["responses"]])
    out, start = [], 0
    for rec in records:
        out.append({**rec, "scores": flat[start : start + len(rec["responses"])]})
        start += len(rec["responses"])
    return write_jsonl(cfg.out, out)
