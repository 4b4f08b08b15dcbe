"""Scoring with a reward model, and its reports: raw rewards of encoded responses, the reward normalisation,
the `Scorer` of a saved model, held-out pairwise accuracy / calibration, and the `rm eval` / `rm score` stages.

A saved model is any one-label sequence-classification directory. One `rm train` saved (`trained_by_rlhfkit`) is
scored with rlhfkit's encoding and normalised by the statistics it stores; any other is read as its own tokenizer
encodes (`foreign_texts`: its chat template, else the text pair) and scored raw unless statistics are measured on
a reference file (`norm_reference`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tyro.conf import DisallowNone

from rlhfkit.config import DataConfig
from rlhfkit.data import (Encoded, check_output, collate, detect_kind, encode_pair, read_located, read_records,
                          write_jsonl, write_text)
from rlhfkit.data.chat import Prompt, as_messages
from rlhfkit.data.encode import prompt_text, render_chat, response_text
from rlhfkit.errors import RlhfkitError
from rlhfkit.logprobs import eval_mode
from rlhfkit.reward.groups import Group, encode_groups
from rlhfkit.reward.model import (appends_eos, load_saved_reward_model, reward_at_last_token, reward_tokenizer,
                                  trained_by_rlhfkit)

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
    normalize: DisallowNone[bool | None] = None
    """Write normalised rewards (r - mean) / std. Unset: by --norm-reference's statistics, else the model's stored
    ones (`rm train`'s), else raw with a note; --normalize: refuse a model with neither; --no-normalize: raw head
    outputs."""
    norm_reference: str | None = None
    """Candidates / preferences / rankings file whose responses' raw rewards set the mean and std (for any model,
    over the ones it stores)."""
    batch_size: int = 16
    """Responses scored per forward pass."""


# ------------------------------------------------------------------------------------------------ scoring
def by_length(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of batch_size, shortest first, so that a batch computes little padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def score_encoded(model: Any, examples: Sequence[Encoded], pad_id: int, batch_size: int = 16,
                  device: Any = None) -> list[float]:
    """Raw rewards of encoded examples, in their order; batched by length so little padding is computed."""
    device = device if device is not None else next(model.parameters()).device
    out = [0.0] * len(examples)
    with eval_mode(model):
        for chunk in by_length([len(e.input_ids) for e in examples], batch_size):
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


# ------------------------------------------------------------------------ reward models from elsewhere
def foreign_texts(tokenizer: Any, prompt: Prompt, response: str) -> tuple[str, ...]:
    """What a reward model rlhfkit did not train reads, as its tokenizer's authors intend: with a chat template,
    the conversation with the response as its last (assistant) turn, one text whose special tokens the template
    wrote; without, the (prompt, response) text pair sequence classifiers take (BERT, DeBERTa reward models),
    a conversation prompt in the plain template (`prompt_text`)."""
    if getattr(tokenizer, "chat_template", None):
        return (render_chat(tokenizer, [*as_messages(prompt), {"role": "assistant", "content": response}], False),)
    return prompt_text(tokenizer, prompt), response_text(tokenizer, prompt, response)


def max_input_length(model: Any, tokenizer: Any) -> int:
    """The longest input the model reads: its position table's size or its tokenizer's limit, whichever is less
    (a tokenizer that sets none has a huge placeholder limit)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(positions or tokenizer.model_max_length, tokenizer.model_max_length)


def encode_foreign(tokenizer: Any, texts: Sequence[tuple[str, ...]], max_length: int,
                   append_eos: bool) -> list[dict[str, list[int]]]:
    """Token ids (and a text pair's segment ids) of each `foreign_texts`: a chat-rendered text as it is (its
    special tokens are in it), a pair with the tokenizer's own special tokens, then the EOS when append_eos.
    Over-long input is cut from the left, within each text of a pair, so the end the score is read at stays
    and no response is dropped."""
    if not texts:
        return []
    tokenizer.truncation_side = "left"
    pair = len(texts[0]) == 2
    columns = [list(column) for column in zip(*texts)]
    enc = tokenizer(*columns, add_special_tokens=pair, truncation=True, max_length=max_length - int(append_eos))
    rows = [{k: list(enc[k][i]) for k in ("input_ids", "token_type_ids") if k in enc} for i in range(len(texts))]
    if append_eos:
        for row in rows:
            row["input_ids"].append(tokenizer.eos_token_id)
            if "token_type_ids" in row:
                row["token_type_ids"].append(row["token_type_ids"][-1])
    return rows


def right_padded(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    """Rows of ids as one (B, T) long tensor, each padded on the right with value to the longest."""
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


@torch.no_grad()
def score_features(model: Any, features: Sequence[dict[str, list[int]]], pad_id: int,
                   batch_size: int = 16) -> list[float]:
    """Raw rewards of `encode_foreign` rows, in their order; batched by length, padded on the right (the
    attention mask comes from the lengths, so the pad id is any token the model knows)."""
    device = next(model.parameters()).device
    out = [0.0] * len(features)
    with eval_mode(model):
        for chunk in by_length([len(f["input_ids"]) for f in features], batch_size):
            rows = [features[i] for i in chunk]
            batch = {k: right_padded([r[k] for r in rows], pad_id if k == "input_ids" else 0).to(device)
                     for k in rows[0]}  # input_ids, token_type_ids (a text pair's segments): (B, T) each
            mask = right_padded([[1] * len(r["input_ids"]) for r in rows], 0).to(device)  # (B, T)
            rewards = reward_at_last_token(model, batch["input_ids"], mask, batch.get("token_type_ids"))
            for i, r in zip(chunk, rewards.tolist()):
                out[i] = r
    return out


# -------------------------------------------------------------------------------------------- the scorer
def rlhfkit_raw_scorer(model: Any, tokenizer: Any, batch_size: int) -> Scorer:
    """Raw rewards of a model `rm train` saved, encoded as it was trained (`encode_for_scoring`)."""
    encoding = getattr(model.config, "rlhfkit_encoding", None) or DEFAULT_ENCODING

    def raw(prompts: list[Prompt], responses: list[str]) -> list[float]:
        examples = [encode_for_scoring(tokenizer, p, r, encoding) for p, r in zip(prompts, responses)]
        return score_encoded(model, examples, tokenizer.pad_token_id, batch_size)

    return raw


def foreign_raw_scorer(model: Any, tokenizer: Any, batch_size: int) -> Scorer:
    """Raw rewards of any other model, read as its tokenizer encodes (`foreign_texts`). A text pair ends with
    the EOS, appended when the tokenizer does not end a text with it itself (a decoder's: rlhfkit has always read
    such models there); a chat template ends the text as the model's authors trained it."""
    limit = max_input_length(model, tokenizer)
    append_eos = (not getattr(tokenizer, "chat_template", None) and tokenizer.eos_token_id is not None
                  and not appends_eos(tokenizer))

    def raw(prompts: list[Prompt], responses: list[str]) -> list[float]:
        texts = [foreign_texts(tokenizer, p, r) for p, r in zip(prompts, responses)]
        features = encode_foreign(tokenizer, texts, limit, append_eos)
        return score_features(model, features, tokenizer.pad_token_id, batch_size)

    return raw


def measured_norm(raw: Scorer, source: str) -> dict[str, Any]:
    """`reward_norm` of the raw rewards of every response in a reference file, said in one line."""
    from rlhfkit.tracking import say

    pairs = reference_responses(source)
    norm = reward_norm(raw([p for p, _ in pairs], [r for _, r in pairs]), source)
    say(f"rm: reward normalisation measured on {source}: mean {norm['mean']:.4f}, std {norm['std']:.4f} over "
        f"{norm['n']} responses")
    return norm


def scoring_norm(raw: Scorer, config: Any, path: str | Path, normalize: bool | Literal["auto"],
                 norm_reference: str | None) -> tuple[float, float]:
    """(mean, std) the scorer normalises by: measured on norm_reference, else the model's stored statistics, else
    none (0, 1): said in a note under "auto", refused under normalize=True."""
    from rlhfkit.tracking import say

    if norm_reference and normalize is False:
        raise RlhfkitError("a normalisation reference (--norm-reference) was given with normalisation off "
                           "(--no-normalize): give one or the other")
    if normalize is False:
        return 0.0, 1.0
    norm = measured_norm(raw, norm_reference) if norm_reference else getattr(config, "rlhfkit_reward_norm", None)
    if norm:
        return norm["mean"], norm["std"]
    if normalize is True:
        raise RlhfkitError(f"'{path}' stores no reward normalisation (config.rlhfkit_reward_norm): give a "
                           "reference file to measure one on (--norm-reference FILE), or score raw (--no-normalize)")
    say(f"rm: {path} stores no reward normalisation, so its raw rewards are used; to normalise them, measure the "
        "mean and std on a file of responses (rm score --norm-reference FILE, a judge's --judge-norm FILE)")
    return 0.0, 1.0


def load_reward_scorer(path: str | Path, normalize: bool | Literal["auto"] = "auto", batch_size: int = 16,
                       device: Any = None, norm_reference: str | None = None) -> Scorer:
    """scorer(prompts, responses) -> one reward per pair, of any one-label sequence-classification directory.

    normalize "auto": (r - mean) / std by the statistics measured on norm_reference (a candidates, preferences
    or rankings file), else by those `rm train` stored, else raw rewards (with a note); True: the same, but a
    model with no statistics is refused; False: raw rewards."""
    model, tokenizer = load_saved_reward_model(path)
    if device is not None:
        model.to(device)
    build = rlhfkit_raw_scorer if trained_by_rlhfkit(model.config) else foreign_raw_scorer
    raw = build(model, tokenizer, batch_size)
    mean, std = scoring_norm(raw, model.config, path, normalize, norm_reference)

    def scorer(prompts: list[Prompt], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [(r - mean) / std for r in raw(prompts, responses)]

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
    tokenizer = reward_tokenizer(tokenizer)  # rm eval reads every model with rlhfkit's encoding: it needs an EOS
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
    normalize = "auto" if cfg.normalize is None else cfg.normalize
    scorer = load_reward_scorer(cfg.model, normalize, cfg.batch_size, norm_reference=cfg.norm_reference)
    flat = checked_scores(scorer, [r["prompt"] for r in records for _ in r["responses"]],
                          [x for r in records for x in r["responses"]], f"rm:{cfg.model}",
                          [where for rec, where in located for _ in rec["responses"]])
    out, start = [], 0
    for rec in records:
        out.append({**rec, "scores": flat[start : start + len(rec["responses"])]})
        start += len(rec["responses"])
    return write_jsonl(cfg.out, out)
