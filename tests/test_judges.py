"""Language-model judges: answer parsing, probabilities, templates, both orders, retries, the cache, and the local
Hugging Face backend on a model whose answer is fixed by construction."""

from __future__ import annotations

import math

import pytest
from fixed_judge import build_fixed_judge

from rlhfkit.errors import RlhfkitError
from rlhfkit.judges import (Completion, JudgementCache, JudgeOptions, LMJudge, choice_probability, expected_score,
                            load_template, make_judge, parse_choice, parse_score)


# ------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, choice", [
    ("A", "A"), ("B.", "B"), (" B\n", "B"), ("(B)", "B"), ("**A**", "A"), ("Response A", "A"),
    ("Response B is better.", "B"), ("Output (a)", "A"), ("Output (b)", "B"), ("Answer: B", "B"),
    ("[[A]]", "A"), ("My verdict: [[B]]", "B"), ("The better response is B", "B"), ('"A"', "A"),
    ("A: 2+2=4", "A"), ("tie", "tie"), ("Tie.", "tie"), ("[[C]]", "tie"), ("[[tie]]", "tie"),
    # unparseable: never a side
    ("a better answer is B", None), ("As an AI, I cannot", None), ("I think B", None), ("AB", None), ("", None),
    ("Both are good", None),
])
def test_parse_choice(text, choice):
    assert parse_choice(text) == choice


@pytest.mark.parametrize("text, score", [
    ("5", 5), ("Score: 6", 6), ("[[4]]", 4), ("3/7", 3), ("rating - 2", 2), ("7.", 7),
    ("8", None), ("0", None), ("3.5", None), ("seven", None), ("", None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_choice_probability_adds_spellings_at_the_answer_token():
    tokens = ("Response", " B")
    top = ({"Response": -0.1}, {" B": math.log(0.6), " A": math.log(0.2), "B": math.log(0.1), "(": math.log(0.05)})
    assert choice_probability(tokens, top) == pytest.approx(0.2 / (0.2 + 0.7))
    assert choice_probability(tokens, None) is None
    assert choice_probability(("Hmm",), ({"Hmm": 0.0},)) is None


def test_expected_score_is_the_probability_weighted_digit():
    tokens = ("Score", ":", " 5")
    top = ({}, {}, {" 5": math.log(0.5), "5": math.log(0.1), "6": math.log(0.3), "x": math.log(0.1)})
    assert expected_score(tokens, top) == pytest.approx((5 * 0.6 + 6 * 0.3) / 0.9)


# ---------------------------------------------------------------------------------------------- templates
def test_builtin_templates_load_and_render_values_verbatim():
    for name in ("pairwise", "principles", "factuality"):
        assert load_template(name, "pairwise").kind == "pairwise"
    t = load_template("", "pointwise")
    text = t.render(prompt="Say {hi}", response="{response_a}")
    assert "Say {hi}" in text and "{response_a}" in text and "{prompt}" not in text


@pytest.mark.parametrize("body, kind, message", [
    ("{prompt} {response_a}", "pairwise", "a pairwise template needs {prompt}, {response_a}, {response_b}; it "
                                          "lacks {response_b}"),
    ("{prompt} {response_a} {response_b} {responce}", "pairwise", "unknown field {responce}"),
    ("{prompt} {response}", "pairwise", "is pointwise, but a pairwise judge is needed here"),
    ("{prompt} {response} {response_a} {response_b}", "pairwise", "a template is one or the other"),
])
def test_template_errors_are_one_line(tmp_path, body, kind, message):
    path = tmp_path / "t.txt"
    path.write_text(body)
    with pytest.raises(RlhfkitError, match=None) as err:
        load_template(str(path), kind)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_template_file_that_does_not_exist_names_the_built_ins():
    with pytest.raises(RlhfkitError, match="no such file, and not a built-in template .*factuality"):
        load_template("nope.txt", "pairwise")


# --------------------------------------------------------------------------------------- the judge's logic
class FakeBackend:
    """Answers with `answer(user_message, call)`; counts calls; optionally fails after `fail_after` answers."""

    def __init__(self, answer, fail_after: int | None = None, identity: str = "fake:judge"):
        self.answer, self.fail_after, self.identity = answer, fail_after, identity
        self.calls = 0

    def complete(self, calls, max_tokens):
        for i, call in enumerate(calls):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RlhfkitError("backend went away")
            self.calls += 1
            yield i, self.answer(call.messages[-1][1], call)


def _first_response(message: str) -> str:
    return message.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]


def _judge(backend, tmp_path=None, **options) -> LMJudge:
    cache = str(tmp_path / "cache.sqlite") if tmp_path is not None else "none"
    return make_judge("fake:judge", JudgeOptions(judge_cache=cache, **options), backend=backend)


def test_a_content_judge_is_consistent_across_orders():
    judge = _judge(FakeBackend(lambda m, c: Completion("A" if "good" in _first_response(m) else "B")))
    verdicts = judge.compare(["p1", "p2"], ["good", "bad"], ["bad", "good"])
    assert [v.winner for v in verdicts] == ["a", "b"]
    assert all(v.consistent for v in verdicts) and judge.counts["order_inconsistent"] == 0
    assert verdicts[0].answers == ("A", "B")  # a first, then b first
    assert verdicts[0].judge == "fake:judge" and verdicts[0].template.startswith("pairwise@")
    assert verdicts[0].prob_a is None  # no log-probs from this backend


def test_a_position_biased_judge_gives_ties_and_is_counted():
    judge = _judge(FakeBackend(lambda m, c: Completion("A")))
    verdicts = judge.compare(["p"] * 3, ["x", "y", "z"], ["u", "v", "w"])
    assert [(v.winner, v.consistent) for v in verdicts] == [("tie", False)] * 3
    assert judge.counts["order_inconsistent"] == 3 and judge.counts["pairs"] == 3
    one_order = _judge(FakeBackend(lambda m, c: Completion("A")), judge_both_orders=False)
    assert [v.winner for v in one_order.compare(["p"], ["x"], ["u"])] == ["a"]


def test_probabilities_are_averaged_over_the_two_orders():
    def answer(message, call):  # P(A) = 0.8 when "x" is shown first, 0.4 when it is shown second
        p = 0.8 if _first_response(message) == "x" else 0.4
        return Completion("A", ("A",), ({"A": math.log(p), "B": math.log(1 - p)},))

    verdict = _judge(FakeBackend(answer)).compare(["p"], ["x"], ["y"])[0]
    assert verdict.prob_a == pytest.approx((0.8 + (1 - 0.4)) / 2)


def test_unparseable_answers_are_retried_sampled_and_never_a_side():
    def answer(message, call):  # greedy: babble; the second re-ask (seed 2) answers
        return Completion("B" if call.temperature > 0 and call.seed == 2 else "I cannot decide.")

    backend = FakeBackend(answer)
    judge = _judge(backend, judge_both_orders=False, judge_retries=2)
    assert judge.compare(["p"], ["x"], ["y"])[0].winner == "b"
    assert backend.calls == 3 and judge.counts["unparseable_answers"] == 2 and judge.counts["unparseable"] == 0

    never = _judge(FakeBackend(lambda m, c: Completion("no idea")), judge_retries=1)
    verdict = never.compare(["p"], ["x"], ["y"])[0]
    assert verdict.winner is None and verdict.consistent is None
    assert never.counts["unparseable"] == 1 and never.counts["unparseable_answers"] == 4  # 2 orders x 2 asks


def test_the_pointwise_scorer_refuses_to_make_up_a_score():
    rater = make_judge("fake:judge", JudgeOptions(judge_cache="none"), "pointwise",
                       backend=FakeBackend(lambda m, c: Completion("6" if "great" in m else "dunno")))
    assert rater.scorer()(["p"], ["great"]) == [6.0]
    with pytest.raises(RlhfkitError, match="1 of 2 answers give no score from 1 to 7 after 2 re-asks"):
        rater.scorer()(["p", "p"], ["great", "meh"])


def test_a_second_run_makes_no_backend_call(tmp_path):
    answer = lambda m, c: Completion("A" if "good" in _first_response(m) else "B")  # noqa: E731
    first = FakeBackend(answer)
    expected = _judge(first, tmp_path).compare(["p"] * 4, ["good", "bad", "good", "bad"], ["bad"] * 4)
    assert first.calls == 3  # 8 questions, 3 distinct: (good, bad), (bad, good), (bad, bad)
    second = FakeBackend(answer)
    judge = _judge(second, tmp_path)
    assert judge.compare(["p"] * 4, ["good", "bad", "good", "bad"], ["bad"] * 4) == expected
    assert second.calls == 0 and judge.counts["cache_hits"] == 8


def test_a_run_killed_mid_way_resumes_without_repaying(tmp_path):
    answer = lambda m, c: Completion("A" if "good" in _first_response(m) else "B")  # noqa: E731
    prompts, a, b = [f"p{i}" for i in range(5)], ["good"] * 5, ["bad"] * 5
    with pytest.raises(RlhfkitError, match="backend went away"):
        _judge(FakeBackend(answer, fail_after=4), tmp_path).compare(prompts, a, b)
    assert len(JudgementCache(tmp_path / "cache.sqlite")) == 4  # each answer was stored as it came
    resumed = FakeBackend(answer)
    assert [v.winner for v in _judge(resumed, tmp_path).compare(prompts, a, b)] == ["a"] * 5
    assert resumed.calls == 10 - 4


def test_the_cache_key_holds_the_judge_and_the_template(tmp_path):
    answer = lambda m, c: Completion("A")  # noqa: E731
    _judge(FakeBackend(answer), tmp_path).compare(["p"], ["x"], ["y"])
    other_judge = FakeBackend(answer, identity="fake:other")
    _judge(other_judge, tmp_path).compare(["p"], ["x"], ["y"])
    other_template = FakeBackend(answer)
    _judge(other_template, tmp_path, judge_template="principles").compare(["p"], ["x"], ["y"])
    assert other_judge.calls == 2 and other_template.calls == 2


# ------------------------------------------------------------------------- the local backend, fixed answers
@pytest.fixture(scope="module")
def always_a_dir(tmp_path_factory):
    """A tiny Llama that answers "A" and then EOS whatever it is asked, with P(A) / (P(A) + P(B)) = 3/4."""
    return build_fixed_judge(tmp_path_factory.mktemp("judge") / "always-a", "A", "B", odds=3.0)


def test_the_hf_backend_on_a_model_that_always_answers_a(always_a_dir, tmp_path):
    judge = make_judge(f"hf:{always_a_dir}", JudgeOptions(judge_cache=str(tmp_path / "c.sqlite")))
    verdicts = judge.compare(["which is better?", "and now?"], ["yes", "no"], ["no", "yes"])
    assert [(v.winner, v.consistent, v.answers) for v in verdicts] == [("tie", False, ("A", "A"))] * 2
    # 3/4 for the first response when shown first, 1/4 when shown second: the mean is exactly 1/2
    assert [v.prob_a for v in verdicts] == pytest.approx([0.5, 0.5], abs=1e-4)
    assert verdicts[0].judge.startswith(f"hf:{always_a_dir}@") and len(verdicts[0].judge.split("@")[-1]) == 12

    one_order = make_judge(f"hf:{always_a_dir}", JudgeOptions(judge_cache="none", judge_both_orders=False))
    verdict = one_order.compare(["which is better?"], ["yes"], ["no"])[0]
    assert (verdict.winner, verdict.prob_a) == ("a", pytest.approx(0.75, abs=1e-4))


def test_a_missing_local_judge_model_is_one_line(tmp_path):
    with pytest.raises(RlhfkitError, match="model directory not found: ./no-such-model"):
        make_judge("hf:./no-such-model", JudgeOptions(judge_cache="none"))


# ------------------------------------------------------------------------------- the offline default judge
@pytest.mark.slow
def test_the_offline_smollm2_judge_end_to_end(tmp_path):
    """SmolLM2-135M-Instruct (`hf:`) on a handful of clear pairs: every answer parses, probabilities come from its
    log-probs, provenance names it, and a second run is served from the cache. Its verdicts are not asserted: at
    135M parameters it answers "A" whatever the order (measured), so the pairs come out as ties, and most of its
    pointwise answers name no score."""
    prompts = ["What is the capital of France?", "Is the sky blue on a clear day?", "What is 2 + 2?",
               "Say something kind to a friend."]
    better = ["The capital of France is Paris.", "Yes, on a clear day the sky looks blue.", "2 + 2 = 4.",
              "You are a wonderful friend and I am glad to know you."]
    worse = ["The capital of France is Berlin.", "No, the sky is green.", "2 + 2 = 5.", "Go away."]
    options = JudgeOptions(judge_cache=str(tmp_path / "cache.sqlite"))
    judge = make_judge("hf:", options)
    verdicts = judge.compare(prompts, better, worse)
    assert judge.counts["unparseable"] == 0 and judge.counts["backend_calls"] == 8
    assert all(v.winner in ("a", "b", "tie") and 0.0 <= v.prob_a <= 1.0 for v in verdicts)
    assert all(v.judge.startswith("hf:smollm2@") and len(v.answers) == 2 for v in verdicts)
    again = make_judge("hf:", options)
    assert again.compare(prompts, better, worse) == verdicts and again.counts["backend_calls"] == 0
    rater = make_judge("hf:", options, "pointwise")
    rated = rater.rate(prompts, better)  # at 135M most of its 1-7 answers are prose: counted, never made up
    assert rater.counts["unparseable"] == sum(v.score is None for v in rated)
    assert all(1.0 <= v.value <= 7.0 for v in rated if v.score is not None)
