"""`rlhfkit eval judge-agreement`: how often a judge picks the side that held-out human or gold labels prefer, next
to how often the gold labels agree with each other where there are several. This is how the DPO paper (Rafailov
et al. 2023, sec. 6.4) validated GPT-4 as a judge: a judge is as good as the labels only if it agrees with them
about as often as they agree among themselves.

Pairs. A preferences file gives one pair per record, a rankings file its C(K, 2) untied pairs. Records about the
same prompt and the same two responses (in either order) are one pair with several labels: a labelling app's
export (`rlhfkit label export`) or duplicated rows. A labeler's second label of one pair is not a second opinion
and is dropped (records name their labeler in `label.labeler`; rows without one count as different labelers).
The first `num_pairs` distinct pairs after a shuffle seeded by `seed` are judged, once each.

Position. A seeded coin per pair decides which response the judge sees first; with the labels' preferred side
always first, a judge that always answers "A" would score 100%.

What is reported (each rate with its 95% interval), besides the counts of preference records read (a ranking's
pairs each count), distinct pairs, pairs judged, and pairs whose first record's chosen side was shown first:
  agreement            among pairs the judge decided (not a tie, not unparseable): the share of the pair's labels
                       whose preferred side the judge picked (0 or 1 with one label)
  agreement_ties_half  the same with the judge's ties counted as half, among pairs with any answer (the DPO
                       paper's win rates count ties this way)
  ties, unparseable    counts; an unparseable verdict is excluded from both rates, never a side or a tie
  order_inconsistent   pairs whose two orders named different sides (both orders asked), and their share
  prob                 where the judge gives P(A) from log-probs: the mean P(labels' side), and the share of pairs
                       where it exceeds 1/2 (exactly 1/2 counts half)
  gold_gold            agreement between the gold labels themselves, of two kinds:
                         labels    every two labels of one pair from different labelers (the InstructGPT figure)
                         criteria  per-side rating dicts with several numeric keys (`label.ratings = [{...} of
                                   chosen, {...} of rejected]`, the chitchat preferences): every two criteria
                                   that order the pair (a criterion rating both sides alike is skipped)

Intervals. Every rate is a mean over pairs of a per-pair value in [0, 1]: 0 or 1 when a pair has one label or
one comparison, a fraction when it has several (three labels of one pair give three label pairs, which are not
independent). The Wilson interval (`rlhfkit.stats.wilson_interval`) is taken with n = the number of pairs, not of
comparisons: the labels of one pair share its texts, and a variable in [0, 1] with mean p has variance at most
p(1 - p), so the binomial interval is conservative for fractional values (as for ties counting half in
`stats.win_rate`). Pairs about one prompt are not independent either (the chitchat pairs share 47 openings,
and a conversation's reply appears in many pairs), so each rate also has `ci95_by_prompt`: a percentile
bootstrap that resamples whole prompts. Where the two differ, the wider is the honest one.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np

from rlhfkit import stats
from rlhfkit.data import (Prompt, check_output, detect_kind, prompt_key, ranking_to_pairs, read_located,
                          write_text)
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.judges.judge import JudgeOptions, PairVerdict
from rlhfkit.tracking import say

BOOTSTRAP_RESAMPLES = 2000
Where = tuple[str, int]


@dataclass(frozen=True)
class JudgeAgreementArgs(JudgeOptions):
    """rlhfkit eval judge-agreement: how often a judge agrees with held-out human or gold preferences, next to how
    often the gold labels agree with each other."""

    data: str
    """Preferences or rankings: JSONL, parquet or a `datasets` name (a ranking gives its C(K,2) untied pairs)."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of `data`; `auto` reads it from the first record."""
    columns: str = ""
    """Read fields from other columns, as `--data.columns` of rm train: `prompt=history,responses=a+b,...`."""
    judge: str = "hf:"
    """Judge: hf:MODEL or openai:MODEL (asked which response is better), or a scorer: vader, module:function,
    rm:PATH (the higher score wins). `hf:` alone is SmolLM2-135M-Instruct, offline."""
    num_pairs: int = 500
    """Judge the first N distinct pairs after a seeded shuffle; 0 = all."""
    seed: int = 0
    """Seed of the shuffle, of the coin that decides which response is shown first, and of the bootstrap."""
    out: str | None = None
    """Also write the JSON report here."""


# ---------------------------------------------------------------------------------------------------- pairs
@dataclass
class Item:
    """One distinct pair: its prompt, its two responses in the order first read (x = that record's chosen), where
    it was first read, which side each label prefers ("x" / "y"), and per label with ratings `rating_signs`."""

    prompt: Prompt
    x: str
    y: str
    where: Where
    labels: list[str] = field(default_factory=list)
    criteria: list[dict[str, int]] = field(default_factory=list)
    labelers: set[str] = field(default_factory=set)


def read_pairs(source: str, fmt: str = "auto", columns: str = "") -> list[tuple[dict, Where]]:
    """(preference record, file:line) of every pair in a preferences or rankings source; DataError when there is
    none."""
    kind = detect_kind(source, ("preferences", "rankings"), fmt, columns=columns)
    located = read_located(source, kind, columns)
    if kind == "preferences":
        return located
    pairs = [(pair, where) for rec, where in located for pair in ranking_to_pairs(rec)]
    if not pairs:
        raise DataError(source, None, "no untied pairs in its rankings: every ranked response ties")
    return pairs


def rating_signs(ratings: Any) -> dict[str, int] | None:
    """{criterion: sign(first side's rating - second side's)} from `label.ratings` = [{criterion: number} of the
    chosen side, {...} of the rejected side], over the numeric criteria both sides have; None unless that shape
    with at least two criteria (one criterion cannot disagree with anything)."""
    if not (isinstance(ratings, list) and len(ratings) == 2 and all(isinstance(r, dict) for r in ratings)):
        return None

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    keys = sorted(k for k in ratings[0] if k in ratings[1] and number(ratings[0][k]) and number(ratings[1][k]))
    if len(keys) < 2:
        return None
    return {k: (ratings[0][k] > ratings[1][k]) - (ratings[0][k] < ratings[1][k]) for k in keys}


def gather_items(pairs: Sequence[tuple[dict, Where]]) -> list[Item]:
    """The distinct pairs (same prompt, same two responses in either order), in the order first read, each with
    every label it was given; a labeler's second label of one pair is dropped (see the module docstring)."""
    items: dict[tuple[str, str, str], Item] = {}
    for rec, where in pairs:
        chosen, rejected = rec["chosen"], rec["rejected"]
        key = (prompt_key(rec["prompt"]), *sorted((chosen, rejected)))
        item = items.setdefault(key, Item(rec["prompt"], chosen, rejected, where))
        label = rec.get("label") if isinstance(rec.get("label"), dict) else {}
        labeler = label.get("labeler")
        if labeler is not None:
            if str(labeler) in item.labelers:
                continue
            item.labelers.add(str(labeler))
        item.labels.append("x" if chosen == item.x else "y")
        signs = rating_signs(label.get("ratings"))
        if signs is not None:  # compared within this label only, so which side is "first" does not matter
            item.criteria.append(signs)
    return list(items.values())


def select_items(items: Sequence[Item], num_pairs: int, seed: int) -> tuple[list[Item], list[bool]]:
    """The first `num_pairs` items (0: all) after a shuffle, and per item a coin: True = x is shown first."""
    rng = random.Random(seed)
    order = list(items)
    rng.shuffle(order)
    chosen = order[:num_pairs] if num_pairs else order
    return chosen, [rng.random() < 0.5 for _ in chosen]


# ------------------------------------------------------------------------------------------------- judging
def judge_items(items: Sequence[Item], x_first: Sequence[bool], args: JudgeAgreementArgs
                ) -> tuple[list[PairVerdict], dict[str, int]]:
    """A verdict per item about (a, b) as shown, and the language-model judge's counts (empty for a scorer)."""
    prompts = [it.prompt for it in items]
    shown = [(it.x, it.y) if first else (it.y, it.x) for it, first in zip(items, x_first)]
    a, b = [s[0] for s in shown], [s[1] for s in shown]
    from rlhfkit.labeling.auto import make_labeler

    labeler = make_labeler(args.judge, args, "pairs")
    verdicts = labeler.compare(prompts, a, b, [it.where for it in items])
    return verdicts, dict(labeler.judge.counts) if labeler.judge is not None else {}


def picked_side(verdict: PairVerdict, x_first: bool) -> str | None:
    """"x", "y", "tie", or None (unparseable) from a verdict about the pair as shown."""
    if verdict.winner in ("a", "b"):
        return "x" if (verdict.winner == "a") == x_first else "y"
    return verdict.winner


# ------------------------------------------------------------------------------------------------ statistics
def prompt_bootstrap(values: Sequence[float], clusters: Sequence[str], seed: int,
                     n_boot: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95) -> list[float] | None:
    """Percentile interval of mean(values) when whole prompts (`clusters`, one per value) are resampled with
    replacement; None with fewer than two prompts (nothing to resample)."""
    keys = sorted(set(clusters))
    if len(keys) < 2:
        return None
    position = {k: i for i, k in enumerate(keys)}
    index = np.array([position[c] for c in clusters])  # (N,) each value's prompt
    sums = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=len(keys))  # (C,)
    counts = np.bincount(index, minlength=len(keys)).astype(np.float64)  # (C,), each >= 1
    draws = np.random.default_rng(seed).multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)),
                                                    size=n_boot)  # (n_boot, C)
    rates = (draws @ sums) / (draws @ counts)  # (n_boot,); a draw has len(keys) >= 1 prompts, so no 0 / 0
    low, high = np.quantile(rates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def rate_summary(values: Sequence[float], clusters: Sequence[str], seed: int) -> dict[str, Any] | None:
    """{n, rate, ci95 (Wilson, n = pairs), ci95_by_prompt, prompts} of per-pair values in [0, 1] (see the module
    docstring); None without any."""
    if not values:
        return None
    rate = sum(values) / len(values)
    low, high = stats.wilson_interval(rate, len(values))
    return {"n": len(values), "rate": rate, "ci95": [low, high],
            "ci95_by_prompt": prompt_bootstrap(values, clusters, seed), "prompts": len(set(clusters))}


def label_agreement(labels: Sequence[str]) -> tuple[int, int]:
    """(agreeing, compared) over every two labels of one pair."""
    compared = list(combinations(labels, 2))
    return sum(a == b for a, b in compared), len(compared)


def criteria_agreement(criteria: Sequence[dict[str, int]]) -> tuple[int, int]:
    """(agreeing, compared) over every two criteria that order the pair, within each label's ratings."""
    agree = total = 0
    for signs in criteria:
        for a, b in combinations([s for s in signs.values() if s != 0], 2):
            agree, total = agree + (a == b), total + 1
    return agree, total


def gold_gold(items: Sequence[Item], seed: int) -> dict[str, Any]:
    """Agreement between the gold labels themselves (see the module docstring): "labels" where pairs have labels
    from several labelers, "criteria" where labels carry per-criterion ratings; neither key without such data."""
    out: dict[str, Any] = {}
    for kind, counts, what in (
        ("labels", [label_agreement(it.labels) for it in items],
         "every two labels of one pair from different labelers"),
        ("criteria", [criteria_agreement(it.criteria) for it in items],
         "every two rating criteria that order one pair (" +
         ", ".join(sorted({k for it in items for signs in it.criteria for k in signs})) + ")"),
    ):
        kept = [(it, a / n) for it, (a, n) in zip(items, counts) if n]
        if kept:
            summary = rate_summary([v for _, v in kept], [prompt_key(it.prompt) for it, _ in kept], seed)
            out[kind] = {"what": what, "comparisons": sum(n for _, n in counts), **summary}  # type: ignore[dict-item]
    return out


def agreement_report(items: Sequence[Item], x_first: Sequence[bool], verdicts: Sequence[PairVerdict],
                     seed: int) -> dict[str, Any]:
    """The figures of the module docstring, from each item's verdict about the pair as shown."""
    decided, answered = [], []
    ties = unparseable = 0
    for it, first, verdict in zip(items, x_first, verdicts):
        key = prompt_key(it.prompt)
        side = picked_side(verdict, first)
        if side in ("x", "y"):
            value = sum(label == side for label in it.labels) / len(it.labels)
            decided.append((value, key))
            answered.append((value, key))
        elif side == "tie":
            ties += 1
            answered.append((0.5, key))
        else:
            unparseable += 1
    asked_twice = [v for v in verdicts if v.consistent is not None]
    inconsistent = sum(v.consistent is False for v in asked_twice)
    return {
        "pairs": len(items),
        "chosen_shown_first": sum(x_first),
        "agreement": rate_summary(*_unzip(decided), seed),
        "agreement_ties_half": rate_summary(*_unzip(answered), seed),
        "ties": ties,
        "tie_share": ties / len(answered) if answered else None,
        "unparseable": unparseable,
        "order_inconsistent": inconsistent if asked_twice else None,
        "order_inconsistent_share": inconsistent / len(asked_twice) if asked_twice else None,
        "prob": probability_report(items, x_first, verdicts, seed),
        "gold_gold": gold_gold(items, seed),
    }


def probability_report(items: Sequence[Item], x_first: Sequence[bool], verdicts: Sequence[PairVerdict],
                       seed: int) -> dict[str, Any] | None:
    """Over the pairs whose verdict has P(a) from log-probs (whatever the answer's text): the mean P(labels'
    side), with its normal interval, and the share of pairs where it exceeds 1/2 (exactly 1/2 counts half);
    None without log-probs. A judge that always answers "A" can still rank the sides by probability."""
    p_gold, p_agree, keys = [], [], []
    for it, first, verdict in zip(items, x_first, verdicts):
        if verdict.prob_a is None:
            continue
        p_x = verdict.prob_a if first else 1.0 - verdict.prob_a
        per_label = [p_x if label == "x" else 1.0 - p_x for label in it.labels]
        p_gold.append(sum(per_label) / len(per_label))
        p_agree.append(sum((p > 0.5) + 0.5 * (p == 0.5) for p in per_label) / len(per_label))
        keys.append(prompt_key(it.prompt))
    if not p_gold:
        return None
    mean = stats.mean_ci(p_gold)
    return {"n": len(p_gold), "mean_p_gold": mean.mean, "mean_p_gold_ci95": [mean.low, mean.high],
            "agreement": rate_summary(p_agree, keys, seed)}


def _unzip(pairs: Sequence[tuple[float, str]]) -> tuple[list[float], list[str]]:
    return [v for v, _ in pairs], [k for _, k in pairs]


# ------------------------------------------------------------------------------------------------- summary
def _rate(summary: dict[str, Any]) -> str:
    low, high = summary["ci95"]
    return f"{summary['rate']:.3f} [{low:.3f}, {high:.3f}] over {summary['n']} pairs"


def describe(report: dict[str, Any]) -> str:
    """One line for a person: the judge's agreement, its ties and failures, and the gold labels' own agreement."""
    judge = report["judge_identity"]
    if report["agreement"] is None:
        parts = [f"{judge} decided no pair (every verdict a tie or unparseable)"]
    else:
        parts = [f"{judge} agrees with the gold side {_rate(report['agreement'])}"]
    if report["agreement_ties_half"] is not None:
        parts.append(f"ties counting half {_rate(report['agreement_ties_half'])}")
    parts.append(f"{report['ties']} ties, {report['unparseable']} unparseable (left out)")
    if report["order_inconsistent_share"] is not None:
        parts.append(f"{report['order_inconsistent_share']:.0%} order-inconsistent")
    if report["prob"] is not None:
        prob = report["prob"]
        parts.append(f"by log-probs {_rate(prob['agreement'])}, mean P(gold side) {prob['mean_p_gold']:.3f}")
    for kind, gold in report["gold_gold"].items():
        parts.append(f"gold labels agree with each other ({kind}) {_rate(gold)}")
    if not report["gold_gold"]:
        parts.append("one gold label per pair: no gold-gold agreement")
    return "; ".join(parts) + " (95% Wilson intervals; the first response shown chosen by a seeded coin)"


def main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(JudgeAgreementArgs, argv, prog="rlhfkit eval judge-agreement")
    if args.num_pairs < 0:
        raise RlhfkitError(f"--num-pairs must be >= 0 (0 = all), got {args.num_pairs}")
    if args.out:
        check_output(args.out)
    pairs = read_pairs(args.data, args.format, args.columns)  # bad data fails before a model loads
    all_items = gather_items(pairs)
    items, x_first = select_items(all_items, args.num_pairs, args.seed)
    verdicts, counts = judge_items(items, x_first, args)
    judged = next((v for v in verdicts if v.judge), None)
    report = {"judge": args.judge, "judge_identity": judged.judge if judged else args.judge,
              "template": judged.template if judged else "", "data": args.data, "preference_records": len(pairs),
              "distinct_pairs": len(all_items), "seed": args.seed,
              **agreement_report(items, x_first, verdicts, args.seed), "judge_counts": counts}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_text(args.out, text)
    say(f"judge-agreement: {describe(report)}")
    return 0
