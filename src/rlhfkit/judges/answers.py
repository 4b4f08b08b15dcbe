"""Reading a judge's answer: which side it chose (or a tie), or the 1-7 score it gave, and the probability behind
it where the backend exposes log-probs. Pure functions of text and log-probs; nothing here calls a model.

Accepted pairwise answers (the parser reads the start of the answer, or a bracketed verdict anywhere):
`A`, `B.`, `(B)`, `**A**`, `Response A`, `Response B is better`, `Output (a)`, `Answer: B`, `[[A]]`, and a tie as
`tie`, `Tie.`, `[[C]]` or `[[tie]]`. Anything else is unparseable (None): counted and retried by the judge, never
mapped to a side.

Probabilities (RLAIF's way: the distribution over the answer token). At the first generated position whose token
is a choice letter, P(A) / (P(A) + P(B)) from that position's top log-probs, adding the spellings of a letter
(`A`, ` A`). A pointwise score's expectation is sum_k k P(k) / sum_k P(k) over the digits 1..7 at the position of
the score's digit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Choice = str  # "A", "B" or "tie"

_WORD = r"(?:response|output|answer|assistant|option|summary|completion)"
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
# A leading label ("Answer:", "Verdict -", "The better response is") and then the letter, alone or after a word.
_LEAD = r"^[\s*#>_\"'`]*(?:(?:the\s+)?(?:better|best|preferred|final)?\s*(?:answer|verdict|choice|preference|response|output)?\s*(?:is|:|=|-)\s*)?"
_UPPER = re.compile(_LEAD + rf"[*_\"'`]*(?:{_WORD}\s*)?[(\[]?\s*([AB])\s*[)\]]?(?![A-Za-z0-9])", re.IGNORECASE)
_LOWER = re.compile(_LEAD + rf"[*_\"'`]*(?:{_WORD}\s*)?[(\[]\s*([ab])\s*[)\]]", re.IGNORECASE)
_TIE = re.compile(_LEAD + r"[*_\"'`]*(?:it'?s\s+a\s+)?(tie|equal|neither)\b", re.IGNORECASE)
_SCORE = re.compile(r"^[\s*#>_\"'`]*(?:(?:score|rating|grade)\s*[:=-]?\s*)?\[*\s*([1-9]\d*)(?![\d.,]\d)", re.IGNORECASE)
SCORE_RANGE = (1, 7)


def parse_choice(text: str) -> Choice | None:
    """"A", "B" or "tie" from a judge's pairwise answer; None when it names neither (see the module docstring).

    A bare uppercase letter counts; a lowercase one only in brackets or after a word like "Output", so that the
    article in "a better answer is B" is not read as a choice."""
    bracketed = _BRACKETED.search(text)
    if bracketed:
        letter = bracketed.group(1).upper()
        return "tie" if letter in ("C", "TIE") else letter
    for pattern in (_TIE, _LOWER):
        match = pattern.match(text)
        if match:
            return "tie" if pattern is _TIE else match.group(1).upper()
    match = _UPPER.match(text)
    if match and (match.group(1).isupper() or re.match(_LEAD + rf"[*_\"'`]*{_WORD}", text, re.IGNORECASE)):
        return match.group(1).upper()
    return None


def parse_score(text: str, low: int = SCORE_RANGE[0], high: int = SCORE_RANGE[1]) -> int | None:
    """The integer score at the start of a pointwise answer (`5`, `Score: 6`, `[[4]]`, `3/7`), None when there is
    none or it lies outside [low, high]."""
    match = _SCORE.match(text)
    if not match:
        return None
    value = int(match.group(1))
    return value if low <= value <= high else None


def _letter(token: str) -> str:
    """A token's text without spaces and brackets, upper-cased: ` A`, `(a`, `**B` -> `A`, `A`, `B`."""
    return token.strip().strip("*_([\"'`").upper()


def _mass(top: dict[str, float], keep: str) -> float:
    """Probability of every spelling of `keep` among a position's top log-probs."""
    return sum(math.exp(lp) for token, lp in top.items() if _letter(token) == keep)


def choice_probability(tokens: Sequence[str], top_logprobs: Sequence[dict[str, float]] | None) -> float | None:
    """P(A) / (P(A) + P(B)) at the first generated position whose token is a choice letter, None without
    log-probs or such a position. A letter absent from the top list counts as probability 0 there."""
    if not top_logprobs:
        return None
    for token, top in zip(tokens, top_logprobs):
        if _letter(token) in ("A", "B"):
            a, b = _mass(top, "A"), _mass(top, "B")
            return a / (a + b) if a + b > 0 else None
    return None


def expected_score(tokens: Sequence[str], top_logprobs: Sequence[dict[str, float]] | None,
                   low: int = SCORE_RANGE[0], high: int = SCORE_RANGE[1]) -> float | None:
    """sum_k k P(k) / sum_k P(k) over the digits low..high at the first generated position whose token is one,
    None without log-probs or such a position."""
    if not top_logprobs:
        return None
    digits = {str(k) for k in range(low, high + 1)}
    for token, top in zip(tokens, top_logprobs):
        if token.strip() in digits:
            mass = {k: _mass(top, str(k)) for k in range(low, high + 1)}
            total = sum(mass.values())
            return sum(k * p for k, p in mass.items()) / total if total > 0 else None
    return None
