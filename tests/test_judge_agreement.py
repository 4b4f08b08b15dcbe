"""`rlhfkit eval judge-agreement`: a judge's agreement with gold preferences and the gold labels' own agreement,
checked by hand on small files with fake judges (a backend whose answer is fixed by construction, and a scorer
defined here). Wilson intervals below are from tables / computed by hand, not by rlhfkit.stats."""

from __future__ import annotations

import json
import math

import pytest

from rlhfkit import cli
from rlhfkit.corpus import chitchat_preference_pairs
from rlhfkit.data import write_jsonl
from rlhfkit.judges import Completion
from rlhfkit.judges import judge as judge_module
from rlhfkit.judges.agreement import rate_summary


class FakeBackend:
    """Answers every question with `answer(user_message)`; counts calls."""

    identity = "fake:judge"

    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def complete(self, calls, max_tokens):
        for i, call in enumerate(calls):
            self.calls += 1
            yield i, self.answer(call.messages[-1][1])


def shown(message: str) -> tuple[str, str]:
    """The two responses of a rendered pairwise question, as shown: (A, B)."""
    rest = message.split("[Response A]\n", 1)[1]
    a, rest = rest.split("\n\n[Response B]\n", 1)
    return a, rest.split("\n\n", 1)[0]


def content_judge(message: str) -> Completion:
    """Prefers the response that says "good" (both do: "A", whatever the order); "???" makes it babble."""
    if "???" in message:
        return Completion("hmm")
    return Completion("A" if "good" in shown(message)[0] else "B")


def longer(prompts: list[str], responses: list[str]) -> list[float]:
    """A scorer judge (`test_judge_agreement:longer`): the longer response wins."""
    return [float(len(r)) for r in responses]


@pytest.fixture
def fake(monkeypatch):
    """Make `--judge hf:fake` answer with the function this returns a setter for."""
    backends = []

    def use(answer):
        backend = FakeBackend(answer)
        backends.append(backend)
        monkeypatch.setattr(judge_module, "make_backend", lambda spec, options: backend)
        return backend

    return use


def agreement(tmp_path, capsys, records, *extra, judge="hf:fake"):
    """Run the command on `records`; (report from --out, stdout's JSON, stderr lines)."""
    data, out = tmp_path / "pairs.jsonl", tmp_path / "report.json"
    write_jsonl(data, records)
    rc = cli.main(["eval", "judge-agreement", "--data", str(data), "--judge", judge, "--judge-cache", "none",
                   "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(out.read_text())
    assert json.loads(captured.out) == report
    return report, captured.err.splitlines()


def pair(prompt, chosen, rejected, **label):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **({"label": label} if label else {})}


# --------------------------------------------------------------------------------------------- the judge
def test_agreement_ties_and_unparseable_answers_by_hand(tmp_path, capsys, fake):
    records = [pair("q1", "good one", "meh1"), pair("q2", "good two", "meh2"), pair("q3", "good three", "meh3"),
               pair("q4", "meh4", "good four"),  # the judge disagrees
               pair("q5", "good five", "good six"),  # "A" in both orders: a tie, order-inconsistent
               pair("q6", "??? six", "meh6")]  # unparseable in both orders
    backend = fake(content_judge)
    report, err = agreement(tmp_path, capsys, records, "--judge-retries", "0")
    assert backend.calls == 12  # 6 pairs x 2 orders, nothing re-asked
    assert (report["pairs"], report["preference_records"], report["distinct_pairs"]) == (6, 6, 6)
    assert report["agreement"]["n"] == 4 and report["agreement"]["rate"] == 0.75
    assert report["agreement"]["ci95"] == pytest.approx([0.3006, 0.9544], abs=1e-4)  # Wilson, 3 of 4
    assert report["agreement_ties_half"]["n"] == 5 and report["agreement_ties_half"]["rate"] == pytest.approx(0.7)
    assert report["agreement_ties_half"]["ci95"] == pytest.approx([0.2988, 0.9274], abs=1e-4)
    assert (report["ties"], report["tie_share"], report["unparseable"]) == (1, 0.2, 1)
    assert (report["order_inconsistent"], report["order_inconsistent_share"]) == (1, 0.2)
    assert report["prob"] is None and report["gold_gold"] == {}  # no log-probs; one label per pair
    assert report["judge_identity"] == "fake:judge" and report["template"].startswith("pairwise@")
    assert report["judge_counts"]["backend_calls"] == 12
    low, high = report["agreement"]["ci95_by_prompt"]
    assert report["agreement"]["prompts"] == 4 and low <= 0.75 <= high
    assert err[-1].startswith("judge-agreement: fake:judge agrees with the gold side 0.750 [0.301, 0.954] over 4 "
                              "pairs; ties counting half 0.700")


def test_a_position_biased_judge_scores_the_coin_not_100_percent(tmp_path, capsys, fake):
    records = [pair(f"q{i}", f"better {i}", f"worse {i}") for i in range(40)]
    fake(lambda message: Completion("A"))
    one_order, _ = agreement(tmp_path, capsys, records, "--no-judge-both-orders")
    first = one_order["chosen_shown_first"]
    assert 10 < first < 30  # the coin: the gold side is not always shown first
    assert one_order["agreement"]["rate"] == first / 40  # "A" is right exactly when the gold side came first
    assert one_order["order_inconsistent"] is None  # one order asked: nothing to be inconsistent with
    both, _ = agreement(tmp_path, capsys, records)
    assert both["agreement"] is None and both["ties"] == 40  # every verdict a tie: no decided pair
    assert both["agreement_ties_half"]["rate"] == 0.5 and both["order_inconsistent_share"] == 1.0


def test_probabilities_from_log_probs_see_past_a_position_bias(tmp_path, capsys, fake):
    def answer(message):  # always "A", but P(A) is 0.7 when the first response says "good", else 0.4
        p = 0.7 if "good" in shown(message)[0] else 0.4
        return Completion("A", ("A",), ({"A": math.log(p), "B": math.log(1 - p)},))

    fake(answer)
    records = [pair("q1", "good 1", "meh 1"), pair("q2", "meh 2", "good 2"), pair("q3", "good 3", "meh 3"),
               pair("q4", "good 4", "meh 4")]
    for seed in ("0", "1"):  # whichever side the coin shows first
        report, _ = agreement(tmp_path, capsys, records, "--seed", seed)
        # P(good is better) = mean over the orders of 0.7 (shown first) and 1 - 0.4 (shown second) = 0.65
        prob = report["prob"]
        assert prob["n"] == 4 and prob["mean_p_gold"] == pytest.approx((3 * 0.65 + 0.35) / 4)
        assert prob["agreement"]["rate"] == 0.75 and report["agreement"] is None

    fake(lambda message: Completion("A", ("A",), ({"A": math.log(0.5), "B": math.log(0.5)},)))
    undecided, _ = agreement(tmp_path, capsys, records)
    assert undecided["prob"]["agreement"]["rate"] == 0.5  # P(gold side) exactly 1/2 counts half, like a tie


# ------------------------------------------------------------------------------------------- gold vs gold
def test_gold_gold_agreement_between_labelers_of_duplicated_pairs(tmp_path, capsys, fake):
    fake(content_judge)
    records = [
        pair("q1", "good a", "b", labeler="alice"), pair("q1", "good a", "b", labeler="bob"),
        pair("q1", "b", "good a", labeler="carol"),  # the same pair in the other order: labels x, x, y -> 1/3
        pair("q2", "good c", "d", labeler="alice"), pair("q2", "good c", "d", labeler="bob"),
        pair("q2", "d", "good c", labeler="alice"),  # alice again: not a second opinion, dropped -> 1
        pair("q3", "e", "good f", labeler="alice"),  # one label: no gold-gold comparison; the judge disagrees
        pair("q4", "good g", "h"), pair("q4", "good g", "h"),  # duplicated rows without a labeler -> 1
    ]
    report, err = agreement(tmp_path, capsys, records)
    assert (report["preference_records"], report["distinct_pairs"]) == (9, 4)
    labels = report["gold_gold"]["labels"]
    assert (labels["n"], labels["comparisons"]) == (3, 5)
    assert labels["rate"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert labels["ci95"] == pytest.approx([0.2734, 0.9702], abs=1e-4)  # Wilson over 3 pairs, not 5 comparisons
    assert "criteria" not in report["gold_gold"]
    # the judge picks the "good" side: 2 of q1's 3 labels, q2's, not q3's, q4's
    assert report["agreement"]["rate"] == pytest.approx((2 / 3 + 1 + 0 + 1) / 4)
    assert report["agreement"]["ci95"] == pytest.approx([0.2451, 0.9249], abs=1e-4)
    assert "gold labels agree with each other (labels) 0.778" in err[-1]


def test_gold_gold_agreement_between_the_chitchat_rating_criteria(tmp_path, capsys, fake):
    def conversation(id_, opening, reply, witty, upbeat, interesting):
        return {"id": id_, "messages": [opening, reply],
                "ratings": {"witty": witty, "upbeat": upbeat, "interesting": interesting}}

    records, _ = chitchat_preference_pairs([
        conversation("c1", "hi", "good to see you", 10, 10, 10), conversation("c2", "hi", "what", 1, 5, 5),
        conversation("c3", "yo", "good day", 5, 10, 10), conversation("c4", "yo", "no", 7, 1, 1),
        conversation("c5", "hey", "good one", 5, 5, 9), conversation("c6", "hey", "eh", 5, 5, 1),
    ])
    assert len(records) == 3
    fake(content_judge)
    report, _ = agreement(tmp_path, capsys, records)
    criteria = report["gold_gold"]["criteria"]
    # hi: all three criteria prefer c1 -> 3 of 3; yo: witty prefers c4, upbeat and interesting c3 -> 1 of 3;
    # hey: only interesting orders the pair -> no comparison
    assert (criteria["n"], criteria["comparisons"]) == (2, 6)
    assert criteria["rate"] == pytest.approx((1 + 1 / 3) / 2)
    assert criteria["ci95"] == pytest.approx([0.1594, 0.9547], abs=1e-4)
    assert criteria["what"].endswith("(interesting, upbeat, witty)") and "labels" not in report["gold_gold"]
    assert report["agreement"]["rate"] == 1.0


def test_pairs_of_one_prompt_are_resampled_together():
    # 20 prompts of 10 pairs each, the judge right on all pairs of 10 prompts and wrong on all of the other 10:
    # 200 pairs, but the evidence of 20 prompts (a 95% interval of about 0.5 +- 1.96 * sqrt(0.25 / 20) = +- 0.22)
    values = [float(p < 10) for p in range(20) for _ in range(10)]
    summary = rate_summary(values, [f"prompt {p}" for p in range(20) for _ in range(10)], seed=0)
    assert summary["rate"] == 0.5 and (summary["n"], summary["prompts"]) == (200, 20)
    assert summary["ci95"] == pytest.approx([0.4314, 0.5686], abs=1e-4)  # Wilson over 200 pairs
    low, high = summary["ci95_by_prompt"]
    assert 0.22 < low < 0.34 and 0.66 < high < 0.78
    assert rate_summary([1.0, 0.0], ["one prompt"] * 2, seed=0)["ci95_by_prompt"] is None


# ------------------------------------------------------------------------------------------ scorer judges
def test_a_scorer_judge_compares_scores_and_rankings_give_their_pairs(tmp_path, capsys):
    records = [pair("q1", "long answer", "short"), pair("q2", "longer one", "tiny"), pair("q3", "no", "a lot more"),
               pair("q4", "same", "size")]
    report, _ = agreement(tmp_path, capsys, records, judge="test_judge_agreement:longer")
    assert report["agreement"]["rate"] == pytest.approx(2 / 3) and report["ties"] == 1
    assert report["agreement_ties_half"]["rate"] == pytest.approx(2.5 / 4)
    assert report["order_inconsistent"] is None and report["prob"] is None and report["judge_counts"] == {}

    ranking = {"prompt": "q", "responses": ["aaa", "a", "aa"], "ranking": [0, 2, 1]}  # 3 pairs, longest first
    report, _ = agreement(tmp_path, capsys, [ranking], judge="test_judge_agreement:longer")
    assert (report["preference_records"], report["pairs"], report["agreement"]["rate"]) == (3, 3, 1.0)


# -------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("records, options, named", [
    (None, [], ["pairs.jsonl"]),  # no such file
    ([pair("q", "a", "b"), {"prompt": "q", "chosen": "a"}], [], ["pairs.jsonl:2", "rejected"]),
    ([pair("q", "a", "b", tie=True)], [], ["no preferences records found"]),
    ([pair("q", "a", "b")], ["--judge", "nope"], ["unknown judge 'nope'"]),
    ([pair("q", "a", "b")], ["--judge-template", "pointwise"], ["pointwise", "pairwise judge is needed"]),
    ([pair("q", "a", "b")], ["--num-pairs", "-1"], ["--num-pairs must be >= 0"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, records, options, named):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(judge_module, "make_backend", lambda spec, options: pytest.fail("a model was loaded"))
    if records is not None:
        write_jsonl(tmp_path / "pairs.jsonl", records)
    rc = cli.main(["eval", "judge-agreement", "--data", "pairs.jsonl", "--judge-cache", "none", "--out", "r.json",
                   *options])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rlhfkit: error: ")]
    assert rc != 0 and len(errors) == 1 and "Traceback" not in err, err  # the reader may say what it skipped
    assert all(name in errors[0] for name in named), err
    assert not (tmp_path / "r.json").exists()
