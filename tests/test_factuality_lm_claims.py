"""The language-model claim checker (FActScore-style extraction and verification, FactTune-MC questions and
agreement): answer parsing, each step against a fake backend whose answers are fixed by the question's content,
the cache, template kinds, and one end-to-end run of the offline SmolLM2 judge."""

from __future__ import annotations

import pytest

from rlhfkit.errors import MissingPackageError, RlhfkitError
from rlhfkit.experiments.factuality.claims import LABELS, Claim, RuleChecker, check
from rlhfkit.experiments.factuality.lm_claims import (LMChecker, as_question, is_abstention, make_checker,
                                                      parse_claims, parse_question, parse_verdict, parse_yes_no)
from rlhfkit.experiments.factuality.world import Entity, World
from rlhfkit.judges import Completion, JudgeOptions, load_template

WORLD = World({"Lyon": Entity("Lyon", "France", "Europe", "Europe/Paris", 516_092)})
REFERENCE = ("Lyon is a city in France. Lyon is in Europe. Lyon's time zone is Europe/Paris. Lyon's population is "
             "about 500 thousand.")


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, claims", [
    ("- Lyon is a city in France.\n- Lyon is in Europe.", ["Lyon is a city in France.", "Lyon is in Europe."]),
    ("Here are the facts:\n1. Lyon is in France.\n2) Lyon is big.\n* Lyon has a river.\nThat is all.",
     ["Lyon is in France.", "Lyon is big.", "Lyon has a river."]),
    ("- Lyon is in Europe.\n- lyon is  in europe\n-   \n- Lyon is in Europe", ["Lyon is in Europe."]),
    ("NONE", []), ("None.", []), ("- None", []),
    ("Lyon is a city in France.", None), ("", None), ("2 million people live there.", None),
])
def test_parse_claims(text, claims):
    assert parse_claims(text) == claims


@pytest.mark.parametrize("text, label", [
    ("SUPPORTED", "supported"), ("Supported.", "supported"), ("True", "supported"), ("Yes, it says so.", "supported"),
    ("Answer: SUPPORTED", "supported"), ("The claim is supported by the reference.", "supported"),
    ("CONTRADICTED", "contradicted"), ("False.", "contradicted"), ("No", "contradicted"),
    ("Incorrect", "contradicted"), ("**Label**: Contradicted", "contradicted"),
    ("NOT ENOUGH INFO", "unverifiable"), ("Not enough information.", "unverifiable"), ("Unknown", "unverifiable"),
    ("NOT SUPPORTED", "unverifiable"), ("Neither", "unverifiable"),
    ("Based on the reference, the claim is CONTRADICTED.", "contradicted"),
    ("Looking at it again: NOT ENOUGH INFO", "unverifiable"),
    ("The reference text supports the claim.", "supported"), ("The reference contradicts it.", "contradicted"),
    ("The reference text does not support the claim", "unverifiable"),  # SmolLM2-135M's usual answer
    # unparseable: never a label, least of all supported
    ("SUPPORTED, CONTRADICTED or NOT ENOUGH INFO", None), ("I think so", None), ("Nonsense", None), ("", None),
])
def test_parse_verdict(text, label):
    assert parse_verdict(text) == label


@pytest.mark.parametrize("text, agrees", [
    ("Yes", True), ("yes, it agrees", True), ("Agrees.", True), ("True", True), ("Answer: Yes", True),
    ("No.", False), ("It does not agree.", False), ("Disagree", False), ("False", False),
    ("The answer agrees with the claim.", True), ("The answer does not agree.", False), ("The answer is no", False),
    ("Maybe", None), ("", None), ("Nobody knows", None),
])
def test_parse_yes_no(text, agrees):
    assert parse_yes_no(text) is agrees


@pytest.mark.parametrize("text, question", [
    ("Which country is Lyon in?", "Which country is Lyon in?"),
    ('Question: "Which country is Lyon in?" That is the question.', "Which country is Lyon in?"),
    ("Sure!\n1. In which country is Lyon?", "In which country is Lyon?"),
    ("Lyon is in France.", None), ("?", None),
])
def test_parse_question(text, question):
    assert parse_question(text) == question


@pytest.mark.parametrize("response, abstains", [
    ("", True), ("  \n", True), ("I do not know much about Lyon.", True),
    ("I'm sorry, but I don't have information about Lyon.", True), ("I am not sure.", True),
    ("I don't know much about Lyon, but it is in France.", False),
    ("Lyon is in France. I am not sure about more.", False), ("Lyon is in France.", False),
])
def test_is_abstention(response, abstains):
    assert is_abstention(response) is abstains


def test_the_fallback_question_asks_about_the_claim_itself():
    assert as_question("Lyon is in France.") == "Is it true that Lyon is in France?"


# --------------------------------------------------------------------------------- a fake backend's answers
class FakeBackend:
    """Answers each call with the first rule whose substrings all occur in the user message (else "Hmm."); keeps
    every call. A rule's answer is a string or a Completion."""

    def __init__(self, rules: dict[tuple[str, ...], str | Completion], identity: str = "fake:judge"):
        self.rules, self.identity = rules, identity
        self.calls: list = []

    def complete(self, calls, max_tokens):
        for i, call in enumerate(calls):
            self.calls.append(call)
            message = call.messages[-1][1]
            answer = next((a for keys, a in self.rules.items() if all(k in message for k in keys)), "Hmm.")
            yield i, answer if isinstance(answer, Completion) else Completion(answer)


EXTRACT = "Break the text below into independent facts"
VERIFY = "Does the reference text support the claim"
QUESTION = "Write one short question"
AGREE = "Does the answer agree with the claim"


def _checker(rules, tmp_path=None, **kwargs) -> tuple[LMChecker, FakeBackend]:
    backend = FakeBackend(rules)
    cache = str(tmp_path / "cache.sqlite") if tmp_path is not None else "none"
    return LMChecker(WORLD, "fake:judge", JudgeOptions(judge_cache=cache), backend, **kwargs), backend


def test_claims_are_extracted_exactly_from_a_bullet_list_and_abstentions_are_not_asked():
    answer = "Here are the facts:\n- Lyon is a city in France.\n- Lyon is in Europe.\n- lyon is in europe\nDone."
    checker, backend = _checker({(EXTRACT, "It is in Europe."): answer})
    claims = checker.extract(["Lyon"] * 3, ["Lyon is a city in France. It is in Europe.",
                                            "I do not know much about Lyon.", ""])
    assert claims == [[Claim("Lyon is a city in France.", "Lyon"), Claim("Lyon is in Europe.", "Lyon")], [], []]
    assert len(backend.calls) == 1 and checker.counts["abstentions"] == 2
    assert "[Text]\nLyon is a city in France. It is in Europe." in backend.calls[0].messages[-1][1]


def test_max_claims_caps_a_response_and_a_cut_off_list_loses_its_last_line():
    capped, _ = _checker({(EXTRACT,): "- A is 1.\n- B is 2.\n- C is 3."}, max_claims=2)
    assert [c.text for c in capped.extract(["Lyon"], ["A is 1. B is 2. C is 3."])[0]] == ["A is 1.", "B is 2."]
    # an answer of extract_tokens tokens was cut by the limit: "- C is" is half a fact
    cut = Completion("- A is 1.\n- B is 2.\n- C is", tokens=("-",) * 8)
    checker, _ = _checker({(EXTRACT,): cut}, extract_tokens=8)
    assert [c.text for c in checker.extract(["Lyon"], ["A is 1. B is 2. C is 3."])[0]] == ["A is 1.", "B is 2."]
    assert checker.counts["cut_claims"] == 1


def test_verify_reads_the_three_labels_against_the_reference_text():
    checker, backend = _checker({
        (VERIFY, "[Claim]\nLyon is a city in France."): "SUPPORTED",
        (VERIFY, "[Claim]\nLyon is in Asia."): "Contradicted: the reference says Europe.",
        (VERIFY, "[Claim]\nLyon has a river."): "NOT ENOUGH INFO",
    })
    claims = [Claim(t, "Lyon") for t in ("Lyon is a city in France.", "Lyon is in Asia.", "Lyon has a river.")]
    checked = checker.verify(["Lyon"], [claims])[0]
    assert [c.label for c in checked] == ["supported", "contradicted", "unverifiable"]
    assert checked[1].evidence == "Contradicted: the reference says Europe."
    assert all(f"[Reference]\n{REFERENCE}\n" in call.messages[-1][1] for call in backend.calls)
    assert len(backend.calls) == 3 and checker.counts["unparseable"] == 0


def test_a_claim_about_an_entity_the_source_lacks_is_unverifiable_without_asking():
    checker, backend = _checker({(VERIFY,): "SUPPORTED"})
    checked = checker.verify(["Atlantis", "Lyon"], [[Claim("Atlantis is in Europe.", "Atlantis")], []])
    assert [[c.label for c in cs] for cs in checked] == [["unverifiable"], []]
    assert backend.calls == [] and checker.counts["no_reference"] == 1


def test_unparseable_answers_are_retried_counted_and_never_supported():
    checker, backend = _checker({(VERIFY,): "Well, Lyon is a lovely city.", (EXTRACT,): "Lyon is lovely.",
                                 (AGREE,): "Perhaps."})
    checked = checker.verify(["Lyon"], [[Claim("Lyon is in France.", "Lyon")]])[0]
    assert [(c.label, c.evidence) for c in checked] == [("unverifiable", "Well, Lyon is a lovely city.")]
    # greedy, then the judge's 2 re-asks sampled at 0.7 with seeds 1 and 2
    assert [(c.temperature, c.seed) for c in backend.calls] == [(0.0, 0), (0.7, 1), (0.7, 2)]
    # an extraction that lists nothing: the response's sentences are its claims (counted)
    assert checker.extract(["Lyon"], ["Lyon is lovely. It is old!  Is it?"]) == [
        [Claim("Lyon is lovely.", "Lyon"), Claim("It is old!", "Lyon"), Claim("Is it?", "Lyon")]]
    assert checker.counts["sentence_claims"] == 1
    assert checker.agree([Claim("Lyon is in France.", "Lyon")], [["France."]]) == [[False]]
    counts = checker.counts
    assert counts["unparseable"] == 3 and len(backend.calls) == 9
    assert counts["verify/unparseable"] == counts["claims/unparseable"] == counts["agree/unparseable"] == 1


def test_questions_and_agreement_are_parsed():
    checker, backend = _checker({
        (QUESTION, "[Claim]\nLyon is a city in France."): 'Question: "Which country is Lyon in?"',
        (QUESTION,): "Lyon is nice.",
        (AGREE, "[Answer]\nLyon is in France."): "Yes, it states the same fact.",
        (AGREE, "[Answer]\nLyon is in Spain."): "No.",
    })
    claims = [Claim("Lyon is a city in France.", "Lyon"), Claim("Lyon is in Europe.", "Lyon")]
    assert checker.question(claims) == ["Which country is Lyon in?", "Is it true that Lyon is in Europe?"]
    assert checker.counts["fallback_questions"] == 1
    before = len(backend.calls)
    agrees = checker.agree(claims, [["Lyon is in France.", "Lyon is in Spain.", " "], []])
    assert agrees == [[True, False, False], []]
    assert len(backend.calls) - before == 2  # the empty answer agrees with nothing, unasked


RULES = {
    (EXTRACT,): "- Lyon is a city in France.\n- Lyon is in Asia.",
    (VERIFY, "[Claim]\nLyon is a city in France."): "SUPPORTED",
    (VERIFY, "[Claim]\nLyon is in Asia."): "CONTRADICTED",
}


def test_check_composes_extract_and_verify_and_the_cache_makes_a_second_run_free(tmp_path):
    first, backend = _checker(RULES, tmp_path)
    checked = check(first, ["Lyon"], ["Lyon is a city in France. It is in Asia."])
    assert (checked[0].supported, checked[0].contradicted, checked[0].score) == (1, 1, 0.5)
    assert first.counts["backend_calls"] == 3 == len(backend.calls)
    again, backend_again = _checker(RULES, tmp_path)
    assert check(again, ["Lyon"], ["Lyon is a city in France. It is in Asia."]) == checked
    assert again.counts["backend_calls"] == 0 and again.counts["cache_hits"] == 3 and backend_again.calls == []


def test_the_identity_names_the_judge_and_the_four_templates():
    checker, _ = _checker({})
    parts = checker.identity.split()
    assert parts[0] == "fake:judge" and [p.split("@")[0] for p in parts[1:]] == ["claims", "verify", "question",
                                                                                  "agree"]


# ---------------------------------------------------------------------------------------------- templates
def test_the_builtin_templates_are_of_their_kinds():
    for kind in ("claims", "verify", "question", "agree"):
        assert load_template("", kind).kind == kind == load_template(kind, kind).kind
    text = load_template("", "verify").render(claim="{x} is big", reference="R")
    assert "[Claim]\n{x} is big" in text and "[Reference]\nR" in text


@pytest.mark.parametrize("body, kind, message", [
    ("{claim}", "verify", "a verify template needs {claim}, {reference}; it lacks {reference}"),
    ("{answer}", "agree", "an agree template needs {claim}, {answer}; it lacks {claim}"),
    ("{claim} {response}", "verify", "(a claim template) and {response} (a response template); a template is one"),
    ("{claim} {answer} {reference}", "agree", "an agree template takes only {claim}, {answer}; it also has "
                                              "{reference}"),
    ("{prompt} {response}", "claims", "is pointwise, but a claims judge is needed here"),
    ("{prompt} {response_a} {response_b}", "agree", "is pairwise, but an agree judge is needed here"),
    ("{claim} {anwser}", "agree", "unknown field {anwser}"),
    ("{response}", "pointwise", "a pointwise template needs {prompt}, {response}; it lacks {prompt}"),
    ("{response}", "pairwise", "is claims, but a pairwise judge is needed here"),
])
def test_template_kind_errors_are_one_line(tmp_path, body, kind, message):
    path = tmp_path / "t.txt"
    path.write_text(body)
    with pytest.raises(RlhfkitError) as err:
        load_template(str(path), kind)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_checker_takes_the_users_templates_and_checks_them_before_asking(tmp_path):
    mine = tmp_path / "facts.txt"
    mine.write_text("List the facts in: {response}")
    checker, backend = _checker({("List the facts in: Lyon",): "- Lyon is old."}, templates=(str(mine), "", "", ""))
    assert checker.extract(["Lyon"], ["Lyon is old."]) == [[Claim("Lyon is old.", "Lyon")]]
    with pytest.raises(RlhfkitError, match=r"t.txt: a verify template needs \{claim\}, \{reference\}") as err:
        (tmp_path / "t.txt").write_text("Is this true? {claim}")
        _checker({}, templates=("", str(tmp_path / "t.txt"), "", ""))
    assert "\n" not in str(err.value)


def test_make_checker_names_rules_or_a_language_model_judge():
    assert isinstance(make_checker("rules", WORLD), RuleChecker)
    checker = make_checker("openai:judge", WORLD, JudgeOptions(judge_cache="none"), backend=FakeBackend({}))
    assert isinstance(checker, LMChecker) and checker.identity.startswith("fake:judge ")
    with pytest.raises(RlhfkitError, match="unknown claim checker 'vader': use rules, hf:MODEL or openai:MODEL"):
        make_checker("vader", WORLD)


# ------------------------------------------------------------------------------- the offline default judge
@pytest.mark.slow
def test_the_offline_smollm2_checker_end_to_end(tmp_path):
    """SmolLM2-135M-Instruct (`hf:`) checks one hand-written response about a real city: every step runs through
    the model and gives well-formed output. Its answers are not asserted: at 135M parameters it is no fact checker
    (measured: it echoes the text instead of listing facts, so the response's sentences become its claims, and it
    answers the verification question with "The reference text does not support the claim")."""
    from rlhfkit.models import smollm2_dir

    try:
        smollm2_dir()
    except MissingPackageError as err:
        pytest.skip(str(err))
    options = JudgeOptions(judge_cache=str(tmp_path / "cache.sqlite"), judge_retries=1, judge_max_tokens=12)
    checker = LMChecker(WORLD, "hf:", options, extract_tokens=64, question_tokens=24)
    checked = check(checker, ["Lyon"], ["Lyon is a city in France. It is in Asia."])[0]
    assert all(isinstance(c.claim, Claim) and c.claim.subject == "Lyon" and c.label in LABELS
               for c in checked.claims)
    claims = [Claim("Lyon is a city in France.", "Lyon"), Claim("Lyon is in Asia.", "Lyon")]
    verified = checker.verify(["Lyon"], [claims])[0]
    assert [c.claim for c in verified] == claims and all(c.label in LABELS for c in verified)
    questions = checker.question(claims)
    assert len(questions) == 2 and all(q.endswith("?") for q in questions)
    assert checker.agree(claims, [["It is in France."], []])[1] == []
    assert checker.identity.startswith("hf:smollm2@")
    assert checker.counts["verify/asked"] == len(checked.claims) + 2
