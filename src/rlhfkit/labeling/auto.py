"""Automatic labelers: turn candidates ({"prompt", "responses", "policy"}) into preference or ranking records
with a scorer (rlhfkit.labeling.gold) and an optional Bradley-Terry noise model. A prompt may be a conversation:
VADER and `module:function` judges read its text in the plain template, and every record keeps it as it came.

Noise. People disagree: InstructGPT's labelers agree with each other ~73% of the time. A noiseless gold
labeler is unrealistically clean, so with `temperature` T > 0 a pair is ordered by sampling the
Bradley-Terry model the reward model itself assumes,

    P(a preferred over b) = sigma((s_a - s_b) / T),

and a ranking by sampling the Plackett-Luce model with utilities s / T (Gumbel-max: sort s / T + Gumbel noise;
for K = 2 it is the same Bradley-Terry probability). T = 0 orders by score exactly.

Hitting ~73% agreement with the gold ordering: the expected agreement is the mean of sigma(|s_a - s_b| / T)
over the pairs (`expected_agreement`), which falls from 1 (T -> 0) to 1/2 (T -> inf). `temperature_for_agreement`
solves it for T given the score gaps of your candidates, e.g. on VADER-scored samples:

    gaps = [abs(a - b) for each candidate pair]; T = temperature_for_agreement(gaps, 0.73)

Ties (VADER gives exactly 0 to many short completions). Pairs: a pair whose scores are exactly equal carries no
preference and is dropped, at any temperature (counted: `ties_dropped`). Rankings: at T = 0 responses of equal
score form a tied group, `"ranking": [2, [0, 1], 3]` (docs/formats.md); at T > 0 equal scores get independent
Gumbel noise, so the sampled ranking orders them uniformly at random, as the Plackett-Luce model does. Either way
the record is kept and counted (`rankings_with_ties`); only a record whose responses all score the same carries
no preference and is dropped (counted: `ties_dropped`). Responses repeating an earlier text of the same record are
dropped first (counted: `identical_dropped`), as in pairs, so a repeat is not counted as a tie.

Language-model judges (`hf:MODEL`, `openai:MODEL`, `rlhfkit.judges`). Pairs: every pair is a pairwise question,
asked in both orders (`judge_candidates`); the judge's verdict orders it, with no noise model (--temperature is
refused). A tie (the orders disagree, or the judge says so) is dropped and counted, or kept with `--ties keep` as a
record whose label says `"tie": true`, which training reads as no preference. An answer that stays unparseable
drops the pair (counted: `unparseable_dropped`). Rankings: each response gets the judge's pointwise 1-7 score
(its expectation under the answer's log-probs where the backend gives them) and is ranked as above.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from rlhfkit.data import check_output, read_located, write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.judges.judge import JudgeOptions, LMJudge, PairVerdict, is_lm_judge, make_judge, scorer_verdicts
from rlhfkit.labeling.gold import Scorer, checked_scores, make_scorer, scorer_source


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def noisy_preference(score_a: float, score_b: float, temperature: float, rng: random.Random) -> bool:
    """True if a is preferred: sampled with P = sigma((s_a - s_b) / T); T = 0 is the deterministic s_a > s_b."""
    if temperature == 0:
        return score_a > score_b
    return rng.random() < sigmoid((score_a - score_b) / temperature)


def noisy_ranking(scores: list[float], temperature: float, rng: random.Random) -> list[int]:
    """Indices best first: a Plackett-Luce sample with utilities s / T (Gumbel-max trick); T = 0 sorts by score.

    Every response gets its own noise, so at T > 0 responses of equal score come out in a uniformly random order;
    at T = 0 they keep their input order (a stable sort; `tied_ranking` groups them instead)."""
    if temperature == 0:
        keys = list(scores)
    else:
        keys = [s / temperature - math.log(-math.log(rng.random() or 1e-300)) for s in scores]
    return sorted(range(len(scores)), key=lambda i: -keys[i])


def tied_ranking(scores: list[float]) -> list[int | list[int]]:
    """Indices best first, responses of exactly equal score as one tied group (a list, in input order), in the
    `ranking` form of docs/formats.md: scores [1, 3, 1, 0] -> [1, [0, 2], 3]."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tiers = [list(tier) for _, tier in itertools.groupby(order, key=lambda i: scores[i])]
    return [tier if len(tier) > 1 else tier[0] for tier in tiers]


def expected_agreement(gaps: list[float], temperature: float) -> float:
    """Mean probability that the noisy label matches the gold order: mean_i sigma(|gap_i| / T)."""
    if temperature == 0:
        return 1.0
    return sum(sigmoid(abs(g) / temperature) for g in gaps) / len(gaps)


def temperature_for_agreement(gaps: list[float], target: float = 0.73) -> float:
    """The T at which `expected_agreement(gaps, T) == target` (bisection on log T; agreement falls with T)."""
    if not 0.5 < target < 1.0 or not any(gaps):
        raise ValueError(f"need 0.5 < target < 1 and some non-zero gaps; got target={target}")
    lo, hi = -30.0, 30.0  # log T
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_agreement(gaps, math.exp(mid)) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def _all_scores(candidates: list[dict], scorer: Scorer, spec: str,
                where: list[tuple[str, int]] | None = None) -> list[list[float]]:
    """Score every (prompt, response) in one call; split back per candidate record. where: each record's
    (file, line), named when the scorer returns a non-finite score."""
    prompts = [c["prompt"] for c in candidates for _ in c["responses"]]
    flat_where = [w for c, w in zip(candidates, where) for _ in c["responses"]] if where is not None else None
    flat = checked_scores(scorer, prompts, [r for c in candidates for r in c["responses"]], spec, flat_where)
    offsets = list(itertools.accumulate([len(c["responses"]) for c in candidates], initial=0))
    return [flat[a:b] for a, b in zip(offsets, offsets[1:])]


def candidate_pairs(responses: list[str], counts: Counter) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of one record's responses that can carry a preference; pairs with an empty text
    (a policy may answer with EOS at once) or the same text twice are left out and counted."""
    pairs = []
    for i, j in itertools.combinations(range(len(responses)), 2):
        if not responses[i].strip() or not responses[j].strip():
            counts["empty_dropped"] += 1
        elif responses[i] == responses[j]:
            counts["identical_dropped"] += 1
        else:
            pairs.append((i, j))
    return pairs


def _pair_records(cand: dict, scores: list[float], temperature: float, rng, label: dict, counts: Counter):
    """All C(K, 2) pairs of one candidate record, each ordered by a (noisy) preference."""
    records = []
    for i, j in candidate_pairs(cand["responses"], counts):
        if scores[i] == scores[j]:
            counts["ties_dropped"] += 1
            continue
        a, b = (i, j) if noisy_preference(scores[i], scores[j], temperature, rng) else (j, i)
        pair_label = dict(label, scores=[scores[a], scores[b]])
        records.append({"prompt": cand["prompt"], "chosen": cand["responses"][a], "rejected": cand["responses"][b],
                        "label": pair_label})
    return records


def _ranking_record(cand: dict, scores: list[float], temperature: float, rng, label: dict, counts: Counter):
    """One ranking of the distinct non-empty responses (empty ones and repeats of an earlier text are left out
    and counted). Equal scores: a tied group at T = 0, a random order at T > 0 (counted either way); a record
    whose responses all score the same is dropped and counted."""
    kept: dict[str, float] = {}  # text -> score, first copy only, in order
    for text, score in zip(cand["responses"], scores):
        if not text.strip():
            counts["empty_dropped"] += 1  # a policy may answer with EOS at once; an empty text cannot be ranked
        elif text in kept:
            counts["identical_dropped"] += 1  # the same text twice: not a tie, a repeat
        else:
            kept[text] = score
    responses, scores = list(kept), list(kept.values())
    if len(kept) < 2:
        counts["too_few_responses"] += 1
        return []
    if len(set(scores)) == 1:
        counts["ties_dropped"] += 1  # every response tied: no preference to express
        return []
    if len(set(scores)) < len(scores):
        counts["rankings_with_ties"] += 1
    ranking = tied_ranking(scores) if temperature == 0 else noisy_ranking(scores, temperature, rng)
    return [{"prompt": cand["prompt"], "responses": responses, "ranking": ranking,
             "label": dict(label, scores=scores)}]


def label_candidates(
    candidates: list[dict],
    scorer: Scorer,
    mode: Literal["pairs", "rankings"] = "pairs",
    temperature: float = 0.0,
    seed: int = 0,
    labeler_name: str = "custom",
    source: str = "gold",
    where: list[tuple[str, int]] | None = None,
) -> tuple[list[dict], Counter]:
    """Preference (mode="pairs") or ranking records for every candidate record, with provenance on each:
    {"source", "labeler", "time" (ISO UTC), "temperature", "seed", "policy", "scores"} (scores of chosen and
    rejected, or of the responses in their given order). Returns (records, counts): what was dropped (the
    module docstring says when) and, for rankings, `rankings_with_ties` (records kept whose scores tie).
    where: each candidate record's (file, line), named if the scorer returns NaN or infinity for it."""
    if mode not in ("pairs", "rankings"):
        raise ValueError(f"mode must be 'pairs' or 'rankings', got {mode!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rng = random.Random(seed)
    time = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts: Counter = Counter(candidates=len(candidates), ties_dropped=0)
    if mode == "rankings":
        counts.update(empty_dropped=0, identical_dropped=0, rankings_with_ties=0)
    records: list[dict] = []
    build = _pair_records if mode == "pairs" else _ranking_record
    for cand, scores in zip(candidates, _all_scores(candidates, scorer, labeler_name, where)):
        label = {"source": source, "labeler": labeler_name, "time": time, "temperature": temperature,
                 "seed": seed, "policy": cand.get("policy")}
        records += build(cand, scores, temperature, rng, label, counts)
    counts["records"] = len(records)
    return records, counts


def judge_candidates(candidates: list[dict], judge: LMJudge, ties: Literal["drop", "keep"] = "drop",
                     labeler_name: str = "custom") -> tuple[list[dict], Counter]:
    """Preference records for every pair of every candidate record, ordered by a language model's pairwise
    verdicts (asked all at once, so the judge batches and caches them). Provenance on each: {"source": "ai",
    "labeler", "time", "policy", "judge", "template", "answers" (raw, first order first), "consistent",
    "prob_chosen" (P(chosen is better) from log-probs, or None)}, and `"tie": true` for kept ties. Returns
    (records, counts): pairs dropped as empty / identical / tied / unparseable, kept ties, order-inconsistent
    verdicts, and the judge's own counts (backend calls, cache hits, unparseable answers re-asked)."""
    counts: Counter = Counter(candidates=len(candidates), ties_dropped=0, unparseable_dropped=0)
    pairs = [(c, i, j) for c, cand in enumerate(candidates) for i, j in candidate_pairs(cand["responses"], counts)]
    verdicts = judge.compare([candidates[c]["prompt"] for c, _, _ in pairs],
                             [candidates[c]["responses"][i] for c, i, _ in pairs],
                             [candidates[c]["responses"][j] for c, _, j in pairs])
    time = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = []
    for (c, i, j), verdict in zip(pairs, verdicts):
        if verdict.winner is None:
            counts["unparseable_dropped"] += 1
            continue
        if verdict.winner == "tie" and ties == "drop":
            counts["ties_dropped"] += 1
            continue
        chosen, rejected = (j, i) if verdict.winner == "b" else (i, j)
        prob = verdict.prob_a if chosen == i or verdict.prob_a is None else 1.0 - verdict.prob_a
        label = {"source": "ai", "labeler": labeler_name, "time": time, "policy": candidates[c].get("policy"),
                 **verdict.provenance(), "prob_chosen": prob}
        if verdict.winner == "tie":
            label["tie"] = True
            counts["ties_kept"] += 1
        responses = candidates[c]["responses"]
        records.append({"prompt": candidates[c]["prompt"], "chosen": responses[chosen],
                        "rejected": responses[rejected], "label": label})
    counts["order_inconsistent"] = sum(v.consistent is False for v in verdicts)
    counts.update({f"judge_{k}": v for k, v in judge.counts.items()
                   if k in ("backend_calls", "cache_hits", "unparseable_answers")})
    counts["records"] = len(records)
    return records, counts


@dataclass(frozen=True)
class Labeler:
    """What labels candidates: a pairwise language-model judge for pairs, else a scorer (a gold function, a reward
    model, or a language model's pointwise scores for rankings)."""

    spec: str
    scorer: Scorer | None = None
    judge: LMJudge | None = None

    def compare(self, prompts: list, responses_a: list[str], responses_b: list[str],
                where: list[tuple[str, int]] | None = None) -> list[PairVerdict]:
        """One verdict per (prompt, a, b): the judge's, or the scorer's (higher score wins). where: each prompt's
        (file, line), named if a scorer returns a non-finite score."""
        if self.judge is not None:
            return self.judge.compare(prompts, responses_a, responses_b)
        assert self.scorer is not None
        return scorer_verdicts(checked_scores(self.scorer, prompts, responses_a, self.spec, where),
                               checked_scores(self.scorer, prompts, responses_b, self.spec, where), self.spec)


def refuse_noise(spec: str, mode: str, temperature: float) -> None:
    """A noise temperature means nothing to a pairwise language-model judge: refuse it rather than ignore it."""
    if temperature and is_lm_judge(spec) and mode == "pairs":
        raise RlhfkitError("--temperature is the noise model of a scorer's labels; a language-model judge's pairs "
                           "follow its verdicts (leave it at 0)")


def make_labeler(spec: str, options: JudgeOptions | None = None, mode: str = "pairs") -> Labeler:
    """The labeler `spec` names for `mode`; built before any sampling, so a bad spec fails first."""
    if is_lm_judge(spec) and mode == "pairs":
        return Labeler(spec, judge=make_judge(spec, options, "pairwise"))
    return Labeler(spec, scorer=make_scorer(spec, options))


def label_with(labeler: Labeler, candidates: list[dict], mode: Literal["pairs", "rankings"] = "pairs",
               temperature: float = 0.0, seed: int = 0, ties: Literal["drop", "keep"] = "drop",
               where: list[tuple[str, int]] | None = None) -> tuple[list[dict], Counter]:
    """Records for the candidates from either kind of labeler (`judge_candidates` or `label_candidates`)."""
    if labeler.judge is not None:
        refuse_noise(labeler.spec, mode, temperature)
        return judge_candidates(candidates, labeler.judge, ties, labeler.spec)
    assert labeler.scorer is not None
    return label_candidates(candidates, labeler.scorer, mode, temperature, seed, labeler.spec,
                            scorer_source(labeler.spec), where)


@dataclass(frozen=True)
class AutoLabelArgs(JudgeOptions):
    candidates: Path
    """Candidates JSONL: {"prompt", "responses": [...], "policy"} per line; the prompt may be a conversation."""
    out: Path
    """Output JSONL of preference records (pairs) or ranking records (rankings)."""
    judge: str = "vader"
    """Labeler: 'vader', 'module:function' (your scorer), 'rm:PATH' (a reward model), 'hf:MODEL' (a local language
    model; 'hf:' = SmolLM2-135M-Instruct, offline) or 'openai:MODEL' (an OpenAI-compatible server, --judge-url)."""
    mode: Literal["pairs", "rankings"] = "pairs"
    """'pairs': all C(K,2) pairs per prompt; 'rankings': one ranking of the K responses per prompt."""
    temperature: float = 0.0
    """Bradley-Terry / Plackett-Luce noise temperature on the score scale; 0 = always follow the scores."""
    seed: int = 0
    """Seed of the noise."""
    ties: Literal["drop", "keep"] = "drop"
    """Language-model judges, pairs: drop a tied pair (counted), or keep it with "label": {"tie": true, ...}."""


def main(argv: list[str]) -> int:
    from rlhfkit.config import parse

    args = parse(AutoLabelArgs, argv, prog="rlhfkit label auto")
    check_output(args.out)
    located = read_located(args.candidates, "candidates")  # bad data fails before a judge model loads
    refuse_noise(args.judge, args.mode, args.temperature)
    labeler = make_labeler(args.judge, args, args.mode)
    records, counts = label_with(labeler, [rec for rec, _ in located], args.mode, args.temperature, args.seed,
                                 args.ties, [where for _, where in located])
    write_jsonl(args.out, records)
    print(json.dumps(dict(counts)))
    return 0
