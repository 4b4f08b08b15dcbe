"""The factuality experiment's knowledge source, tiny world, rule-based claims, FactTune's scores and pairs."""

import json
from collections import Counter

import pytest

from rlhfkit.experiments.factuality.claims import (CONTRADICTED, SUPPORTED, UNVERIFIABLE, Claim, RuleChecker, check,
                                                   parse_sentence, split_sentences)
from rlhfkit.experiments.factuality.scores import equal_budget, mc_scores, pair_records
from rlhfkit.experiments.factuality.world import (ATTRIBUTES, FORMS, QUESTIONS, Entity, World, WorldSizes,
                                                  assign_splits, build_world, load_world, population_phrase, sentence)

LYON = Entity("Lyon", "France", "Europe", "Europe/Paris", 513_275)
OSAKA = Entity("Osaka", "Japan", "Asia", "Asia/Tokyo", 2_592_413)
SMALL = World({"Lyon": LYON, "Osaka": OSAKA})


@pytest.mark.parametrize("population, phrase", [
    (513_275, "500 thousand"), (96_000, "100 thousand"), (250_000, "300 thousand"), (149_999, "100 thousand"),
    (2_140_000, "2 million"), (1_500_000, "2 million"), (14_000_000, "10 million"), (950_000, "1 million"),
])
def test_population_is_rounded_to_one_significant_figure(population, phrase):
    assert population_phrase(population) == phrase


def test_the_knowledge_source_loads_real_cities_with_four_attributes():
    world = load_world()
    assert len(world.entities) > 4000
    paris = world.get("Paris")
    assert paris is not None and paris.facts() == {"country": "France", "continent": "Europe",
                                                   "timezone": "Europe/Paris", "population": "2 million"}
    assert world.get("Atlantis") is None and world.reference_text("Atlantis") == ""
    assert world.reference_text("Paris") == ("Paris is a city in France. Paris is in Europe. Paris's time zone is "
                                             "Europe/Paris. Paris's population is about 2 million.")


def test_every_form_of_every_fact_of_every_city_parses_back_to_its_supported_claim():
    world = load_world()
    checker = RuleChecker(world)
    for name, entity in world.entities.items():
        for attribute, value in entity.facts().items():
            for form in range(len(FORMS[attribute])):
                for named in (True, False):
                    text = sentence(attribute, name, value, form, named)
                    claim = parse_sentence(text, name)
                    assert claim == Claim(text, name, attribute, value), text
                    assert checker.verify_one(claim).label == SUPPORTED


def test_rule_checker_on_a_hand_written_profile():
    response = ("Lyon is a city in Spain. It is in Europe.  Its time zone is Europe/Paris. Zorbville is a city in "
                "France. Lyon has good food. About 3 million people live in Osaka. Its population is about 600 "
                "thousand.")
    [checked] = check(RuleChecker(SMALL), ["Lyon"], [response])
    got = [(c.claim.subject, c.claim.attribute, c.claim.value, c.label) for c in checked.claims]
    assert got == [("Lyon", "country", "Spain", CONTRADICTED), ("Lyon", "continent", "Europe", SUPPORTED),
                   ("Lyon", "timezone", "Europe/Paris", SUPPORTED), ("Zorbville", "country", "France", UNVERIFIABLE),
                   ("Osaka", "population", "3 million", UNVERIFIABLE),
                   ("Lyon", "population", "600 thousand", CONTRADICTED)]
    assert (checked.supported, checked.contradicted, checked.unverifiable) == (2, 2, 2)
    assert checked.score == pytest.approx(2 / 6)
    assert checked.claims[0].evidence == "country of Lyon: France"
    assert checked.claims[4].evidence == "about 'Osaka', not 'Lyon'"  # true of Osaka, but says nothing about Lyon
    d = checked.to_dict()
    assert d["score"] == pytest.approx(1 / 3) and d["claims"][3]["label"] == UNVERIFIABLE
    # asked about Osaka, the same sentence is a supported fact
    [about_osaka] = check(RuleChecker(SMALL), ["Osaka"], ["About 3 million people live in Osaka."])
    assert about_osaka.supported == 1 and about_osaka.score == 1.0


def test_no_claim_means_no_score_and_an_abstention_states_nothing():
    checker = RuleChecker(SMALL)
    for text in ("", "I do not know much about Lyon.", "Lyon is nice", "It is a city in"):
        [checked] = check(checker, ["Lyon"], [text])
        assert checked.claims == () and checked.score is None


def test_sentences_split_after_full_stops_only():
    assert split_sentences(" A b.  C d. E") == ["A b.", "C d.", "E"]
    assert parse_sentence("Its time zone is America/Sao_Paulo.", "Cotia").value == "America/Sao_Paulo"
    assert parse_sentence("The city of Quezon City lies in Philippines.", "X").subject == "Quezon City"


def test_questions_and_agreement_of_the_rule_checker():
    checker = RuleChecker(SMALL)
    claims = [Claim("Lyon is a city in France.", "Lyon", "country", "France"),
              Claim("Its population is about 500 thousand.", "Lyon", "population", "500 thousand")]
    assert checker.question(claims) == [QUESTIONS["country"].format(N="Lyon"), "How many people live in Lyon?"]
    answers = [["Lyon is a city in France.", "Lyon is a city in Spain.", "Osaka is a city in France.", "gibberish"],
               ["Lyon's population is about 500 thousand.", "About 500 thousand people live in Lyon."]]
    assert checker.agree(claims, answers) == [[True, False, False, False], [True, True]]


def test_mc_score_is_the_mean_over_claims_of_the_share_of_agreeing_answers_and_asks_each_question_once():
    checker = RuleChecker(SMALL)
    asked = []

    def answer(questions, m):
        asked.append((list(questions), m))
        table = {"Which country is Lyon in?": ["Lyon is a city in France."] * 3 + ["Lyon is a city in Spain."],
                 "How many people live in Lyon?": ["Lyon's population is about 500 thousand.",
                                                   "Lyon's population is about 2 million."] * 2}
        return [table[q] for q in questions]

    france = Claim("Lyon is a city in France.", "Lyon", "country", "France")
    spain = Claim("Lyon is a city in Spain.", "Lyon", "country", "Spain")
    pop = Claim("Its population is about 500 thousand.", "Lyon", "population", "500 thousand")
    scores, per_claim = mc_scores(checker, [[france, pop], [spain], []], answer, 4)
    assert per_claim == [[0.75, 0.5], [0.25], []]
    assert scores == [pytest.approx(0.625), 0.25, None]
    assert asked == [(["Which country is Lyon in?", "How many people live in Lyon?"], 4)]  # Spain's question reused
    with pytest.raises(ValueError):
        mc_scores(checker, [[france]], answer, 0)


def test_pairs_are_every_pair_with_different_scores_ties_and_unscored_dropped():
    records, counts = pair_records(["p"], [["a", "b", "c", "d"]], [[1.0, 0.5, None, 0.5]], "facttune-fs", 0)
    assert [(r["chosen"], r["rejected"]) for r in records] == [("a", "b"), ("a", "d")]
    assert counts["ties_dropped"] == 1 and counts["unscored"] == 1
    assert records[0]["label"]["labeler"] == "facttune-fs" and records[0]["label"]["scores"] == [1.0, 0.5]
    # the detail baseline: no score is None, so an abstention (0 claims) loses to any profile with claims
    records, counts = pair_records(["p"], [["x", "y"]], [[0.0, 2.0]], "facttune-detail", 0)
    assert [(r["chosen"], r["rejected"]) for r in records] == [("y", "x")]


def test_equal_budget_cuts_every_set_to_the_smallest_keeping_order():
    sets = {"a": [{"i": i} for i in range(10)], "b": [{"i": i} for i in range(4)], "c": [{"i": i} for i in range(7)]}
    cut = equal_budget(sets, 0)
    assert {k: len(v) for k, v in cut.items()} == {"a": 4, "b": 4, "c": 4}
    assert cut["b"] == sets["b"] and [r["i"] for r in cut["a"]] == sorted(r["i"] for r in cut["a"])
    assert equal_budget(sets, 0) == cut


def test_splits_are_disjoint_and_grouped():
    names = [f"C{i}" for i in range(100)]
    splits = assign_splits(names, WorldSizes(sft_entities=30, train_entities=20, eval_entities=10), 3)
    every = [n for groups in splits.values() for g in groups.values() for n in g]
    assert len(every) == len(set(every)) == 60
    assert {g: len(v) for g, v in splits["sft"].items()} == {"often": 12, "rarely": 9, "unseen": 9}
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="ask for 160 entities"):
        assign_splits(names, WorldSizes(sft_entities=100, train_entities=50, eval_entities=10), 0)


def test_the_tiny_world_never_shows_unseen_cities_and_keeps_held_out_cities_out_of_training(tmp_path):
    sizes = WorldSizes(sft_entities=30, train_entities=20, eval_entities=20, often_mentions=5, rarely_mentions=1)
    counts = build_world(tmp_path, sizes, 0)
    splits = json.loads((tmp_path / "entities.json").read_text())
    pretrain = " ".join(json.loads(line)["text"] for f in ("pretrain_train.jsonl", "pretrain_eval.jsonl")
                        for line in (tmp_path / f).read_text().splitlines())
    checker = RuleChecker(load_world())
    mentioned = Counter(c.subject for c in checker.extract(["?"], [pretrain])[0])
    for split, groups in splits.items():
        assert not any(n in mentioned for n in groups["unseen"]), split
        assert all(n in mentioned for n in groups["often"] + groups["rarely"])
    assert all(mentioned[n] > mentioned[m] for n in splits["eval"]["often"] for m in splits["eval"]["rarely"])
    sft = [json.loads(line) for line in (tmp_path / "sft_train.jsonl").read_text().splitlines()]
    held = {n for g in splits["eval"].values() for n in g}
    train = {json.loads(line)["entity"] for line in (tmp_path / "prompts_train.jsonl").read_text().splitlines()}
    assert not held & train and len(train) == 20
    assert not any(n in r["prompt"] or n in r["response"] for r in sft for n in held | train)
    assert counts["sft_train"] == len(sft) == 30 * 3
    # SFT states facts about cities pretraining never mentioned: the behaviour-cloning trap
    unseen_sft = set(splits["sft"]["unseen"])
    profiles = [(r["prompt"].removeprefix("Tell me about ").removesuffix("."), r["response"]) for r in sft
                if r["prompt"].startswith("Tell me about ")]
    stated = [c for name, text in profiles if name in unseen_sft for c in checker.extract([name], [text])[0]]
    assert stated and all(checker.verify_one(c).label == SUPPORTED for c in stated)
    # SFT answers about "It": a model need not copy the name it was asked about
    assert all(c.text.startswith("It") for name, text in profiles for c in checker.extract([name], [text])[0])
    assert all(a in ATTRIBUTES for a in QUESTIONS)
