"""Judge prompt templates: text files with `{field}` slots, rendered as one user turn (then through the judge
model's chat template). Built-in templates live next to this module; a user replaces one by passing a file.

    pairwise     which of two responses is more helpful (the default pairwise template)
    principles   which response follows a short constitution better (harmless, honest, helpful), for RLAIF
    factuality   which response is more factually accurate, with optional `{reference}` text
    pointwise    a 1-7 helpfulness score of one response (the default pointwise template)

A pairwise template must contain {prompt}, {response_a} and {response_b}; a pointwise one {prompt} and
{response}; either may contain {reference}. Only these names are slots: any other `{name}` is refused (a typo
would otherwise reach the judge verbatim), and other braces are plain text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rlhfkit.errors import RlhfkitError

REQUIRED = {"pairwise": ("prompt", "response_a", "response_b"), "pointwise": ("prompt", "response")}
OPTIONAL = ("reference",)
DEFAULTS = {"pairwise": "pairwise", "pointwise": "pointwise"}
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".txt") for p in resources.files(__package__).joinpath("templates").iterdir()
                  if p.name.endswith(".txt"))


@dataclass(frozen=True)
class Template:
    """A checked template: its name (built-in name or file path), text and kind ("pairwise" / "pointwise")."""

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


def template_kind(name: str, text: str) -> str:
    """"pairwise" or "pointwise" from the slots a template has; RlhfkitError naming what is wrong."""
    slots = set(_SLOT.findall(text))
    unknown = sorted(slots - {f for fields in REQUIRED.values() for f in fields} - set(OPTIONAL))
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in (*REQUIRED["pairwise"], "response", *OPTIONAL))
        raise RlhfkitError(f"judge template {name}: unknown field {{{unknown[0]}}}; the fields are {allowed}")
    pairwise = {"response_a", "response_b"} & slots
    if pairwise and "response" in slots:
        raise RlhfkitError(f"judge template {name}: has both {{response}} (pointwise) and {{response_a}}/"
                           "{response_b} (pairwise); a template is one or the other")
    kind = "pairwise" if pairwise else "pointwise"
    missing = [f for f in REQUIRED[kind] if f not in slots]
    if missing:
        needed = ", ".join("{" + f + "}" for f in REQUIRED[kind])
        raise RlhfkitError(f"judge template {name}: a {kind} template needs {needed}; it lacks {{{missing[0]}}}")
    return kind


def load_template(spec: str, kind: str) -> Template:
    """The template named `spec` (a built-in name, or a file), checked to be of `kind`; "" is the kind's default."""
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
    found = template_kind(spec, text)
    if found != kind:
        raise RlhfkitError(f"judge template {spec} is {found}, but a {kind} judge is needed here (the fields: "
                           + ", ".join("{" + f + "}" for f in REQUIRED[kind]) + ")")
    return Template(spec, text, kind)
