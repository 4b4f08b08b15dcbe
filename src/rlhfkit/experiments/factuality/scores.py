"""FactTune's two truthfulness scores, the detail score of the generic-preference baseline, and the pairs.

    FactTune-FS (reference-based)   share of a response's claims the knowledge source supports (FactScore):
                                    `claims.Checked.score`
    FactTune-MC (reference-free)    for each claim, ask the model a question about it M times and take the share
                                    of its answers that agree with the claim; the response's score is the mean over
                                    its claims (`mc_scores`). No reference is read: the model's own consistency
                                    stands in for truth, as "models largely know what they know" predicts.
    detailed (the baseline)         the number of claims: a preference for more detailed answers, a stand-in for
                                    generic human preference with no factuality signal

A response with no claim has no FS or MC score (None) and takes part in no FS / MC pair; its detail score is 0.
`pair_records` makes every pair of one prompt's responses whose scores differ (ties dropped and counted) through
the same labeller every scorer uses (`labeling.auto.label_candidates`), so the records carry the usual provenance.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Sequence

from rlhfkit.experiments.factuality.claims import Claim, ClaimChecker

Answerer = Callable[[list[str], int], list[list[str]]]
"""(questions, M) -> M answers per question, sampled from the model being scored."""


def mc_scores(checker: ClaimChecker, claims: Sequence[Sequence[Claim]], answer: Answerer, samples: int
              ) -> tuple[list[float | None], list[list[float]]]:
    """FactTune-MC: (score per response, agreement share per claim of each response).

    claims[i]: response i's claims. Each claim becomes a question (`checker.question`); identical questions (the
    rule-based checker asks the same question for every value of an attribute) are answered once, M = `samples`
    times, and every claim asking it is compared with the same answers (`checker.agree`)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    flat = [c for cs in claims for c in cs]
    questions = checker.question(flat)
    unique = list(dict.fromkeys(questions))
    answers = dict(zip(unique, answer(unique, samples))) if unique else {}
    agreed = checker.agree(flat, [answers[q] for q in questions])
    shares = [sum(a) / len(a) for a in agreed]
    per_response, start = [], 0
    for cs in claims:
        per_response.append(shares[start:start + len(cs)])
        start += len(cs)
    return [sum(s) / len(s) if s else None for s in per_response], per_response


def pair_records(prompts: Sequence[str], responses: Sequence[Sequence[str]], scores: Sequence[Sequence[float | None]],
                 labeler: str, seed: int) -> tuple[list[dict], Counter]:
    """Preference records {"prompt", "chosen", "rejected", "label"} from every pair of each prompt's responses with
    different scores (higher chosen); responses without a score are left out (counted: `unscored`)."""
    from rlhfkit.labeling.auto import label_candidates

    candidates, lookup, unscored = [], {}, 0
    for i, (prompt, texts, values) in enumerate(zip(prompts, responses, scores, strict=True)):
        kept = [(t, v) for t, v in zip(texts, values, strict=True) if v is not None]
        unscored += len(texts) - len(kept)
        lookup.update({(prompt, t): v for t, v in kept})
        candidates.append({"prompt": prompt, "responses": [t for t, _ in kept], "policy": "sft"})

    def scorer(ps: list, rs: list[str]) -> list[float]:
        return [float(lookup[(p, r)]) for p, r in zip(ps, rs)]

    records, counts = label_candidates(candidates, scorer, "pairs", 0.0, seed, labeler, "ai")
    counts["unscored"] = unscored
    return records, counts


def equal_budget(sets: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    """Every set cut to the size of the smallest, by a seeded sample that keeps file order: methods trained on
    the same number of pairs for the same steps, so none wins by having more data."""
    n = min(len(v) for v in sets.values())
    out = {}
    for name, records in sets.items():
        keep = sorted(random.Random(f"{seed}:{name}").sample(range(len(records)), n))
        out[name] = [records[i] for i in keep]
    return out
