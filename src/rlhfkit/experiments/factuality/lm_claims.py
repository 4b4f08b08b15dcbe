"""The claim checker for real models' free text: a language-model judge does each step of `claims.ClaimChecker`,
as FActScore (Min et al. 2023) and FactTune (Tian et al. 2023) do with GPT-3.5 / Llama.

    extract   the `claims` template: "break the text into independent facts", one per line; each "- " (or "*",
              "1.", "1)") line is a Claim(text, subject=the prompt's entity). An empty response or an abstention
              ("I do not know much about X.") has no claims, and the judge is not asked.
    verify    the `verify` template: does the retrieved passage about the entity (`World.reference_text`) support
              the claim, contradict it, or not address it? Without a passage (an entity the source lacks) the
              claim is unverifiable, unasked.
    question  the `question` template: one question whose answer confirms or refutes the claim (FactTune-MC asks
              the policy that question M times).
    agree     the `agree` template: does one of the policy's answers agree with the claim (yes / no)?

Each step is one LMJudge (one template) on one shared backend and cache, so a re-run pays for nothing twice. An
answer still unparseable after the judge's sampled re-asks is counted (counts["unparseable"], and per step, e.g.
counts["verify/unparseable"]) and resolved the cautious way: the response's sentences as its claims (counted:
sentence_claims; a small judge such as SmolLM2-135M echoes the response instead of listing facts), unverifiable
(never supported), no agreement, or the claim itself as a yes/no question.

Departures from the papers: FActScore splits the text into sentences and decomposes each with few-shot
demonstrations; here the judge decomposes the whole response at once, zero-shot (responses here are a few
sentences). FActScore's verifier answers True / False ("not supported" covers both unaddressed and contradicted);
the three labels here separate them, so contradicted claims (the experiment's "incorrect facts") are only those
the passage refutes. A bare "Not supported" is read as unverifiable.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

from rlhfkit.errors import RlhfkitError
from rlhfkit.experiments.factuality.claims import (CONTRADICTED, SUPPORTED, UNVERIFIABLE, Claim, CheckedClaim,
                                                   ClaimChecker, RuleChecker)
from rlhfkit.experiments.factuality.world import World
from rlhfkit.judges.backends import Backend
from rlhfkit.judges.judge import JudgeOptions, LMJudge, is_lm_judge, make_backend, open_cache
from rlhfkit.judges.templates import load_template

KINDS = ("claims", "verify", "question", "agree")
"""The four templates an LMChecker asks through, in the order `templates` takes them."""

# ------------------------------------------------------------------------------------------- parsing answers
_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+(.*\S)\s*$")
_NONE = re.compile(r"[\s\"'`*_-]*(?:none|no facts?)[.!]?[\s\"'`*_]*", re.IGNORECASE)
# a leading label ("Answer:", "Label -", "**Verdict**:") and a subject ("The claim is", "The reference text"),
# before the verdict itself
_LEAD = (r"^[\s*#>_\"'`\[(]*(?:(?:final\s+)?(?:answer|label|verdict|judge?ment|result)[\s*_]*[:=-]\s*"
         r"[\s*_\"'`\[(]*)?(?:the\s+(?:claim|answer|reference(?:\s+text)?|passage)\s+(?:is\s+)?)?")
_VERDICTS = (  # tried in this order at the start of the answer (so "not supported" is not read as "supported")
    (UNVERIFIABLE, r"not\s+enough\s+info|nei\b|unverifiable|unknown|insufficient|undetermined|unclear|neither|"
                   r"cannot\s+be\s+(?:determined|verified)|can(?:not|'t)\s+(?:tell|say|determine|verify)|"
                   r"not\s+(?:addressed|mentioned|stated|given|supported)|"
                   r"does\s*n[o']t\s+(?:address|say|mention|support)"),
    (CONTRADICTED, r"contradict(?:ed|s|ion)?\b|refute[sd]?\b|false\b|incorrect\b|wrong\b|no\b"),
    (SUPPORTED, r"support(?:ed|s)?\b|true\b|correct\b|yes\b|entail(?:ed|s|ment)?\b"),
)
_VERDICT_PATTERNS = tuple((label, re.compile(_LEAD + f"(?:{p})", re.IGNORECASE)) for label, p in _VERDICTS)
_CANONICAL = re.compile(r"\b(NOT ENOUGH INFO(?:RMATION)?|NOT SUPPORTED|CONTRADICTED|SUPPORTED)\b")
_CANONICAL_LABEL = {"CONTRADICTED": CONTRADICTED, "SUPPORTED": SUPPORTED}
_YES = re.compile(_LEAD + r"(?:yes\b|true\b|agree[sd]?\b|consistent\b|it\s+agrees)", re.IGNORECASE)
_NO = re.compile(_LEAD + r"(?:no\b|false\b|disagree[sd]?\b|inconsistent\b|does\s*n[o']t\s+agree|"
                         r"it\s+does\s*n[o']t|contradict)", re.IGNORECASE)
_QUESTION_LEAD = re.compile(r"^[\s*#>_\"'`-]*(?:\d{1,2}[.)]\s*)?(?:question\s*[:=-]\s*)?[\s\"'`*_]*", re.IGNORECASE)
# an abstention: a sentence that only says the model does not know (no ", but it is in France" after it)
_ABSTAIN = re.compile(
    r"(?:(?:i'm|i\s+am)\s+sorry,?\s*(?:but\s+)?)?"
    r"(?:i\s+(?:do\s+not|don't|dont|cannot|can't|am\s+not\s+able\s+to)\s+(?:know|have|find|say|provide|recall)"
    r"|i\s+(?:have|know)\s+(?:no|nothing)|(?:i'm|i\s+am)\s+not\s+(?:sure|aware|familiar))[^,;:]*",
    re.IGNORECASE)


def _key(text: str) -> str:
    """What makes two claim lines the same: case, spacing and a final full stop aside."""
    return " ".join(text.casefold().split()).rstrip(".")


def parse_claims(text: str) -> list[str] | None:
    """The facts listed in an extraction answer: each "- ", "* ", "1. " or "1) " line's text, empty lines and
    repeats dropped, in order; [] for an answer that says NONE; None when no line is a list item (unparseable)."""
    if _NONE.fullmatch(text):
        return []
    lines = [m.group(1) for m in map(_LINE.match, text.splitlines()) if m]
    if not lines:
        return None
    out: dict[str, str] = {}
    for line in lines:
        if not _NONE.fullmatch(line) and _key(line):
            out.setdefault(_key(line), line)
    return list(out.values())


def parse_verdict(text: str) -> str | None:
    """supported / contradicted / unverifiable from a verification answer: a label at its start (SUPPORTED,
    CONTRADICTED, NOT ENOUGH INFO, or True / False / Unknown, Yes / No, "supports" / "does not support", after an
    optional "Answer:", "The claim is" or "The reference text"), else the one canonical upper-case label it names
    anywhere. None when it names none, or several upper-case labels (an answer that repeats the options,
    "SUPPORTED, CONTRADICTED or NOT ENOUGH INFO")."""
    named = {_CANONICAL_LABEL.get(m, UNVERIFIABLE) for m in _CANONICAL.findall(text)}
    if len(named) > 1:
        return None
    for label, pattern in _VERDICT_PATTERNS:
        if pattern.match(text):
            return label
    return named.pop() if named else None


def parse_yes_no(text: str) -> bool | None:
    """True / False from an agreement answer's start (Yes / No, True / False, "agrees" / "does not agree"), None
    when it starts with neither."""
    if _NO.match(text):
        return False
    if _YES.match(text):
        return True
    return None


def parse_question(text: str) -> str | None:
    """The first question in an answer (up to and with its "?"), without a leading "Question:", quotes or list
    marker; None when the answer asks nothing."""
    for line in text.splitlines():
        body = _QUESTION_LEAD.sub("", line, count=1)
        if "?" in body:
            question = body[: body.index("?") + 1].strip()
            if len(question.split()) >= 2:
                return question
    return None


def is_abstention(response: str) -> bool:
    """Whether a response states nothing: empty, or every sentence an "I do not know" (an abstention that goes
    on to state something, "I don't know much about Lyon, but it is in France.", is not one)."""
    sentences = [s.strip() for s in re.split(r"[.!?]+", response.replace("\u2019", "'")) if s.strip()]
    return all(_ABSTAIN.fullmatch(s) for s in sentences)


def sentences(response: str) -> list[str]:
    """A response's sentences (split after ".", "!" or "?" followed by space), the claims of a response whose
    decomposition stayed unparseable: FActScore's unit before its decomposition step."""
    return [s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", response.strip())) if s]


def as_question(claim: str) -> str:
    """The fallback question of a claim the judge gave no question for: "Is it true that <claim>?"."""
    return f"Is it true that {claim.strip().rstrip('.!')}?"


# ------------------------------------------------------------------------------------------------ the checker
class LMChecker:
    """A ClaimChecker asking one language-model judge (`hf:MODEL`, `openai:MODEL`) through four templates (see the
    module docstring). `templates`: the claims, verify, question and agree templates, each a built-in name or a
    file ("" = the built-in of that kind), checked before the model loads. `max_claims`: the most claims kept per
    response; `extract_tokens` / `question_tokens`: the longest extraction / question answer (verdicts use
    options.judge_max_tokens)."""

    def __init__(self, world: World, spec: str, options: JudgeOptions | None = None, backend: Backend | None = None,
                 templates: Sequence[str] = ("", "", "", ""), max_claims: int = 16, extract_tokens: int = 160,
                 question_tokens: int = 48):
        options = options or JudgeOptions()
        if len(templates) != len(KINDS):
            raise RlhfkitError(f"a claim checker takes {len(KINDS)} templates ({', '.join(KINDS)}), got "
                               f"{len(templates)}")
        if max_claims < 1:
            raise RlhfkitError(f"max_claims must be >= 1, got {max_claims}")
        loaded = [load_template(t, kind) for t, kind in zip(templates, KINDS)]
        backend = backend or make_backend(spec, options)
        cache = open_cache(os.path.expanduser(options.judge_cache))
        tokens = {"claims": extract_tokens, "question": question_tokens}
        self.judges = {kind: LMJudge(spec, backend, t, cache, options.judge_retries,
                                     tokens.get(kind, options.judge_max_tokens), both_orders=False)
                       for kind, t in zip(KINDS, loaded)}
        self.world, self.max_claims = world, max_claims
        self.identity = " ".join([backend.identity, *(t.identity for t in loaded)])
        self.own: Counter = Counter()  # what the checker decided without asking (abstentions, no passage, ...)

    @property
    def counts(self) -> Counter:
        """Everything the four judges counted (backend_calls, cache_hits, asked, unparseable, ...), summed and per
        step ("verify/unparseable"), with the checker's own counts (abstentions, no_reference, ...)."""
        out = Counter(self.own)
        for kind, judge in self.judges.items():
            for name, n in judge.counts.items():
                out[name] += n
                out[f"{kind}/{name}"] += n
        return +out  # without the zeros

    def extract(self, entities: Sequence[str], responses: Sequence[str]) -> list[list[Claim]]:
        """Each response's claims (at most max_claims), about entities[i]. A list cut off at extract_tokens (where
        the backend reports tokens) loses its last line, which is most likely a fact cut in half."""
        if len(entities) != len(responses):
            raise ValueError(f"{len(entities)} entities but {len(responses)} responses")
        asked = [i for i, r in enumerate(responses) if not is_abstention(r)]
        self.own["abstentions"] += len(responses) - len(asked)
        judge = self.judges["claims"]
        out: list[list[Claim]] = [[] for _ in responses]
        for i, (completion, lines) in zip(asked, judge.ask([{"response": responses[i]} for i in asked],
                                                           parse_claims)):
            if lines is None:  # no list after the re-asks: the response's own sentences are its claims
                lines = sentences(responses[i])
                self.own["sentence_claims"] += 1
            elif lines and len(completion.tokens) >= judge.max_tokens:
                lines = lines[:-1]
                self.own["cut_claims"] += 1
            out[i] = [Claim(text, entities[i]) for text in lines[: self.max_claims]]
        return out

    def verify(self, entities: Sequence[str], claims: Sequence[Sequence[Claim]]) -> list[list[CheckedClaim]]:
        """Each claim labelled against the reference passage about entities[i]; evidence = the judge's answer."""
        if len(entities) != len(claims):
            raise ValueError(f"{len(entities)} entities but {len(claims)} claim lists")
        references = [self.world.reference_text(e) for e in entities]
        out: list[list[CheckedClaim | None]] = [[None] * len(cs) for cs in claims]
        todo = []
        for i, cs in enumerate(claims):
            for j, claim in enumerate(cs):
                if references[i]:
                    todo.append((i, j))
                else:
                    out[i][j] = CheckedClaim(claim, UNVERIFIABLE, f"no reference text for {entities[i]!r}")
                    self.own["no_reference"] += 1
        values = [{"claim": claims[i][j].text, "reference": references[i]} for i, j in todo]
        for (i, j), (completion, label) in zip(todo, self.judges["verify"].ask(values, parse_verdict)):
            out[i][j] = CheckedClaim(claims[i][j], label or UNVERIFIABLE, completion.text)
        return out  # type: ignore[return-value]

    def question(self, claims: Sequence[Claim]) -> list[str]:
        """One question per claim; "Is it true that <claim>?" where the judge wrote none (counted)."""
        answers = self.judges["question"].ask([{"claim": c.text} for c in claims], parse_question)
        self.own["fallback_questions"] += sum(q is None for _, q in answers)
        return [q if q is not None else as_question(c.text) for c, (_, q) in zip(claims, answers)]

    def agree(self, claims: Sequence[Claim], answers: Sequence[Sequence[str]]) -> list[list[bool]]:
        """Per claim, per answer: whether the judge says the answer agrees. An empty answer agrees with nothing
        (unasked); an unparseable verdict is False (counted)."""
        if len(claims) != len(answers):
            raise ValueError(f"{len(claims)} claims but {len(answers)} answer lists")
        todo = [(k, m) for k, texts in enumerate(answers) for m, t in enumerate(texts) if t.strip()]
        values = [{"claim": claims[k].text, "answer": answers[k][m]} for k, m in todo]
        out = [[False] * len(texts) for texts in answers]
        for (k, m), (_, agrees) in zip(todo, self.judges["agree"].ask(values, parse_yes_no)):
            out[k][m] = bool(agrees)
        return out


def make_checker(spec: str, world: World, options: JudgeOptions | None = None, backend: Backend | None = None,
                 templates: Sequence[str] = ("", "", "", "")) -> ClaimChecker:
    """The claim checker a spec names: "rules" (exact, the tiny world's language) or a language-model judge
    (`hf:MODEL`, `openai:MODEL`) as an LMChecker."""
    if spec == "rules":
        return RuleChecker(world)
    if is_lm_judge(spec):
        return LMChecker(world, spec, options, backend, templates)
    raise RlhfkitError(f"unknown claim checker '{spec}': use rules, hf:MODEL or openai:MODEL")
