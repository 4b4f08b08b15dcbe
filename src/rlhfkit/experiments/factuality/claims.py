"""Claims in a response, and whether the knowledge source supports them: one interface, two implementations.

A `ClaimChecker` does four things, each batched (an LM-based checker asks a judge many questions at once):

    extract(entities, responses) -> claims per response            decompose a response into atomic claims
    verify(entities, claims)     -> CheckedClaim per claim         supported / contradicted / unverifiable
    question(claims)             -> one question per claim         what to ask a model about the claim (FactTune-MC)
    agree(claims, answers)       -> per claim, per answer: bool    does a model's answer agree with the claim

`check` composes extract and verify into a `Checked` per response: its labelled claims and its truthfulness
score, the share of its claims the knowledge source supports (FactScore; FactTune-FS's reward). A response with
no claim has no score (None): it neither supports nor contradicts anything.

`RuleChecker` is exact for the tiny world's language (`world.FORMS`): a sentence is a claim when it is one of the
forms (with the entity's name, or "It" / "Its" for the prompt's entity); any other sentence is not a claim. Claims
are checked against the source's facts about the entity the prompt asked about (FactScore checks against the
topic's article): a claim about another city, or about a city the source lacks, is unverifiable; one whose value
differs from the source's is contradicted. The LM-based checker for real models lives in `lm_claims`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from rlhfkit.experiments.factuality.world import ATTRIBUTES, FORMS, QUESTIONS, World

SUPPORTED, CONTRADICTED, UNVERIFIABLE = "supported", "contradicted", "unverifiable"
LABELS = (SUPPORTED, CONTRADICTED, UNVERIFIABLE)


@dataclass(frozen=True)
class Claim:
    """One atomic claim: its text, the entity it is about, and (rule-based only) the attribute and value it states."""

    text: str
    subject: str
    attribute: str | None = None
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "subject": self.subject, "attribute": self.attribute, "value": self.value}


@dataclass(frozen=True)
class CheckedClaim:
    """A claim and its label (one of LABELS), with what decided it (the source's value, or a judge's answer)."""

    claim: Claim
    label: str
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.claim.to_dict(), "label": self.label, "evidence": self.evidence}


@dataclass(frozen=True)
class Checked:
    """One response's checked claims."""

    claims: tuple[CheckedClaim, ...]

    def count(self, label: str) -> int:
        return sum(c.label == label for c in self.claims)

    @property
    def supported(self) -> int:
        return self.count(SUPPORTED)

    @property
    def contradicted(self) -> int:
        return self.count(CONTRADICTED)

    @property
    def unverifiable(self) -> int:
        return self.count(UNVERIFIABLE)

    @property
    def score(self) -> float | None:
        """Share of the claims supported (FactScore), None without claims."""
        return self.supported / len(self.claims) if self.claims else None

    def to_dict(self) -> dict[str, Any]:
        return {"claims": [c.to_dict() for c in self.claims], "supported": self.supported,
                "contradicted": self.contradicted, "unverifiable": self.unverifiable, "score": self.score}


class ClaimChecker(Protocol):
    identity: str
    """What checks (for provenance): "rules" or the judge's identity and templates."""

    def extract(self, entities: Sequence[str], responses: Sequence[str]) -> list[list[Claim]]: ...

    def verify(self, entities: Sequence[str], claims: Sequence[Sequence[Claim]]) -> list[list[CheckedClaim]]: ...

    def question(self, claims: Sequence[Claim]) -> list[str]: ...

    def agree(self, claims: Sequence[Claim], answers: Sequence[Sequence[str]]) -> list[list[bool]]: ...


def check(checker: ClaimChecker, entities: Sequence[str], responses: Sequence[str]) -> list[Checked]:
    """Each response's claims, extracted and verified; `entities[i]` is what response i was asked about."""
    if len(entities) != len(responses):
        raise ValueError(f"{len(entities)} entities but {len(responses)} responses")
    claims = checker.extract(entities, responses)
    return [Checked(tuple(c)) for c in checker.verify(entities, claims)]


# --------------------------------------------------------------------------------------------- rule-based
_SUBJECT = r"(?P<s>[A-Z][A-Za-z]*(?:[ -][A-Za-z]+)*?)"
_POSSESSIVE = r"(?P<s>Its|[A-Z][A-Za-z]*(?:[ -][A-Za-z]+)*?'s)"
_VALUE = r"(?P<v>\S(?:.*\S)?)"


def _pattern(form: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[SPNV]\})", form)
    slots = {"{S}": _SUBJECT, "{N}": _SUBJECT, "{P}": _POSSESSIVE, "{V}": _VALUE}
    return re.compile("".join(slots.get(p, re.escape(p)) for p in parts))


PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (attribute, _pattern(form)) for attribute in ATTRIBUTES for form in FORMS[attribute])
"""(attribute, sentence pattern) for every form, in the order they are tried (the first match wins)."""
PRONOUNS = ("It", "Its")
_SENTENCE_END = re.compile(r"(?<=\.)\s+")


def split_sentences(text: str) -> list[str]:
    """The response's sentences: split after each full stop followed by space, whitespace collapsed."""
    return [s for s in (" ".join(part.split()) for part in _SENTENCE_END.split(text.strip())) if s]


def parse_sentence(sentence: str, entity: str) -> Claim | None:
    """The claim a sentence of the tiny world's language states, or None for any other sentence. "It" / "Its"
    stand for `entity` (the prompt's)."""
    for attribute, pattern in PATTERNS:
        m = pattern.fullmatch(sentence)
        if m is None:
            continue
        subject = m.group("s").removesuffix("'s")
        return Claim(sentence, entity if subject in PRONOUNS else subject, attribute, m.group("v"))
    return None


class RuleChecker:
    """The exact checker of the tiny world (see the module docstring), against `world`."""

    identity = "rules"

    def __init__(self, world: World):
        self.world = world

    def extract(self, entities: Sequence[str], responses: Sequence[str]) -> list[list[Claim]]:
        out = []
        for entity, response in zip(entities, responses, strict=True):
            claims = (parse_sentence(s, entity) for s in split_sentences(response))
            out.append([c for c in claims if c is not None])
        return out

    def verify_one(self, claim: Claim, entity: str | None = None) -> CheckedClaim:
        """The claim against the source's facts about `entity` (default: the claim's own subject). A claim about
        another city is unverifiable, as FactScore checks a response only against its topic's article: a profile
        of Lyon that recites a true fact about Paris has not said anything right about Lyon."""
        entity = claim.subject if entity is None else entity
        if claim.subject != entity:
            return CheckedClaim(claim, UNVERIFIABLE, f"about {claim.subject!r}, not {entity!r}")
        found = self.world.get(entity)
        if found is None or claim.attribute is None:
            return CheckedClaim(claim, UNVERIFIABLE, f"the knowledge source has no city {entity!r}")
        truth = found.facts()[claim.attribute]
        label = SUPPORTED if claim.value == truth else CONTRADICTED
        return CheckedClaim(claim, label, f"{claim.attribute} of {entity}: {truth}")

    def verify(self, entities: Sequence[str], claims: Sequence[Sequence[Claim]]) -> list[list[CheckedClaim]]:
        """Each claim against the facts about the entity its response was asked about."""
        if len(entities) != len(claims):
            raise ValueError(f"{len(entities)} entities but {len(claims)} claim lists")
        return [[self.verify_one(c, e) for c in cs] for e, cs in zip(entities, claims)]

    def question(self, claims: Sequence[Claim]) -> list[str]:
        """The one-attribute question about the claim's subject (the same for every value: answers are shared)."""
        return [QUESTIONS[c.attribute].format(N=c.subject) if c.attribute else f"Tell me about {c.subject}."
                for c in claims]

    def agree(self, claims: Sequence[Claim], answers: Sequence[Sequence[str]]) -> list[list[bool]]:
        """An answer agrees when it states the claim's attribute of the claim's subject with the same value."""
        out = []
        for claim, texts in zip(claims, answers, strict=True):
            stated = [[c for c in self.extract([claim.subject], [t])[0]
                       if c.subject == claim.subject and c.attribute == claim.attribute] for t in texts]
            out.append([any(c.value == claim.value for c in cs) for cs in stated])
        return out
