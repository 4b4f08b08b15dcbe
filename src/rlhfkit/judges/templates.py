"""Judge prompt templates: text files with `{field}` slots, rendered as one user turn (then through the judge
model's chat template). Built-in templates live next to this module; a user replaces one by passing a file.

    pairwise     which of two responses is more helpful (the default pairwise template)
    principles   which response follows a short constitution better (harmless, honest, helpful), for RLAIF
    factuality   which response is more factually accurate, with optional `{reference}` text
    pointwise    a 1-7 helpfulness score of one response (the default pointwise template)
    claims       break a response into independent facts, one per line (FActScore's decomposition)
    verify       does a reference text support, contradict or not address a claim (FActScore's verification)
    question     one question whose answer confirms or refutes a claim (FactTune-MC)
    agree        does an answer agree with a claim (FactTune-MC)

A template's kind follows from its slots, one kind per set of slots:

    pairwise   {prompt} {response_a} {response_b}, optionally {reference}
    pointwise  {prompt} {response}, optionally {reference}
    claims     {response} alone (FActScore decomposes the text without the question; with {prompt} too it would
               be a pointwise template)
    verify     {claim} {reference}
    question   {claim} alone
    agree      {claim} {answer}

Only these names are slots: any other `{name}` is refused (a typo would otherwise reach the judge verbatim), and
other braces are plain text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlhfkit.errors import RlhfkitError

REQUIRED = {"pairwise": ("prompt", "response_a", "response_b"), "pointwise": ("prompt", "response"),
            "claims": ("response",), "verify": ("claim", "reference"), "question": ("claim",),
            "agree": ("claim", "answer")}
OPTIONAL = ("reference",)
"""Optional in the pairwise and pointwise kinds (the other kinds take exactly their required slots)."""
DEFAULTS = {kind: kind for kind in REQUIRED}
"""kind -> its built-in default template (each has one of the kind's name)."""
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CLAIM_KINDS = ("verify", "question", "agree")


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".txt") for p in resources.files(__package__).joinpath("templates").iterdir()
                  if p.name.endswith(".txt"))


def allowed_slots(kind: str) -> set[str]:
    """Every slot a template of `kind` may have."""
    return set(REQUIRED[kind]) | (set(OPTIONAL) if kind in ("pairwise", "pointwise") else set())


@dataclass(frozen=True)
class Template:
    """A checked template: its name (built-in name or file path), text and kind (a key of REQUIRED)."""

    name: str
    text: str
    kind: str

    @property
    def identity(self) -> str:
        """name@hash of the text: provenance, and part of the cache key (an edited file is a new template)."""
        return f"{self.name}@{hashlib.sha256(self.text.encode()).hexdigest()[:12]}"

    def render(self, **values: str) -> str:
        """The text with each slot replaced by its value, in one pass (a value's own braces stay as they are)."""
        return _SLOT.sub(lambda m: values.get(m.group(1), ""), self.text)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _fields(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join("{" + f + "}" for f in names)


def _kind_of(name: str, slots: set[str]) -> str:
    """The kind a set of (known) slots names: the kind whose distinguishing slot it has."""
    pairwise = {"response_a", "response_b"} & slots
    if pairwise and "response" in slots:
        raise RlhfkitError(f"judge template {name}: has both {{response}} (pointwise) and {{response_a}}/"
                           "{response_b} (pairwise); a template is one or the other")
    claim_slots = {"claim", "answer"} & slots
    response_slots = {"prompt", "response", "response_a", "response_b"} & slots
    if claim_slots and response_slots:
        raise RlhfkitError(f"judge template {name}: has {_fields(sorted(claim_slots))} (a claim template) and "
                           f"{_fields(sorted(response_slots))} (a response template); a template is one or the other")
    if claim_slots:
        return "agree" if "answer" in slots else "verify" if "reference" in slots else "question"
    if pairwise:
        return "pairwise"
    return "claims" if slots == {"response"} else "pointwise"


def template_kind(name: str, text: str) -> str:
    """The kind (a key of REQUIRED) from the slots a template has; RlhfkitError naming what is wrong."""
    slots = set(_SLOT.findall(text))
    known = {f for fields in REQUIRED.values() for f in fields} | set(OPTIONAL)
    unknown = sorted(slots - known)
    if unknown:
        allowed = _fields([*REQUIRED["pairwise"], "response", *OPTIONAL, "claim", "answer"])
        raise RlhfkitError(f"judge template {name}: unknown field {{{unknown[0]}}}; the fields are {allowed}")
    kind = _kind_of(name, slots)
    missing = [f for f in REQUIRED[kind] if f not in slots]
    if missing:
        raise RlhfkitError(f"judge template {name}: {_a(kind)} template needs {_fields(REQUIRED[kind])}; it lacks "
                           f"{{{missing[0]}}}")
    extra = sorted(slots - allowed_slots(kind))
    if extra:
        raise RlhfkitError(f"judge template {name}: {_a(kind)} template takes only {_fields(REQUIRED[kind])}; it "
                           f"also has {{{extra[0]}}}")
    return kind


def load_template(spec: str, kind: str) -> Template:
    """The template named `spec` (a built-in name, or a file), checked to be of `kind`; "" is the kind's default."""
    if kind not in REQUIRED:
        raise ValueError(f"unknown template kind {kind!r}; the kinds are {', '.join(REQUIRED)}")
    spec = spec or DEFAULTS[kind]
    if spec in builtin_names():
        text = resources.files(__package__).joinpath("templates", f"{spec}.txt").read_text(encoding="utf-8")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise RlhfkitError(f"judge template {spec}: no such file, and not a built-in template "
                               f"({', '.join(builtin_names())})")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RlhfkitError(f"judge template {spec}: not UTF-8 text") from None
    slots = set(_SLOT.findall(text))
    if slots <= allowed_slots(kind) and not set(REQUIRED[kind]) <= slots:
        # a template of this kind with a slot forgotten (e.g. a verify template without {reference}, which reads
        # as a question template): say what it lacks rather than what kind it happens to look like
        missing = next(f for f in REQUIRED[kind] if f not in slots)
        raise RlhfkitError(f"judge template {spec}: {_a(kind)} template needs {_fields(REQUIRED[kind])}; it lacks "
                           f"{{{missing}}}")
    found = template_kind(spec, text)
    if found != kind:
        raise RlhfkitError(f"judge template {spec} is {found}, but {_a(kind)} judge is needed here (the fields: "
                           + _fields(REQUIRED[kind]) + ")")
    return Template(spec, text, kind)
