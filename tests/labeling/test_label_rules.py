"""Pure labelling rules: checking a submitted form, the display shuffle, ranking -> pairs expansion."""

import pytest

from rlhfkit.labeling.webapp.db import item_id, normalize_url
from rlhfkit.labeling.webapp.export import iso_utc, ranking_to_preferences
from rlhfkit.labeling.webapp.labels import InvalidLabel, display_order, parse_submission


def form(**fields):
    return {k: v if isinstance(v, list) else [str(v)] for k, v in fields.items()}


def test_ranks_become_a_best_first_ranking():
    sub = parse_submission(form(rank_0=3, rank_1=1, rank_2=2, likert_0=2, likert_1=7, likert_2=5,
                                flag_0=["untrue", "harmful", "untrue"]), 3)
    assert sub.ranking == [1, 2, 0]
    assert sub.likert == [2, 7, 5]
    assert sub.flags == [["harmful", "untrue"], [], []]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(rank_0=1, rank_1=1, likert_0=4, likert_1=4), "not a ranking"),
        (dict(rank_0=1, rank_1=3, likert_0=4, likert_1=4), "not a ranking"),
        (dict(rank_0=1, likert_0=4, likert_1=4), "rank of response 2 is missing"),
        (dict(rank_0=1, rank_1=2, likert_0=0, likert_1=4), "score of response 1 is 0: scores go from 1 to 7"),
        (dict(rank_0=1, rank_1=2, likert_0=4, likert_1=8), "score of response 2 is 8"),
        (dict(rank_0=1, rank_1=2, likert_0="x", likert_1=4), "score of response 1 is missing or not a whole"),
        (dict(rank_0=1, rank_1=2, likert_0=4, likert_1=4, flag_1="rude"), "unknown flag(s) ['rude']"),
    ],
)
def test_bad_forms_are_rejected_with_a_clear_message(fields, message):
    with pytest.raises(InvalidLabel, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_submission(form(**fields), 2)


def test_display_order_is_a_stable_per_labeler_shuffle():
    orders = {tuple(display_order("item", labeler, 6)) for labeler in range(20)}
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len(orders) > 1  # different labelers see different orders
    assert display_order("item", 3, 6) == display_order("item", 3, 6)


def test_item_id_is_content_identity():
    assert item_id("p", ["a", "b"]) == item_id("p", ["a", "b"])
    assert item_id("p", ["a", "b"]) != item_id("p", ["b", "a"])
    assert item_id("pa", ["b"]) != item_id("p", ["ab"])


def test_ranking_of_k_expands_to_k_choose_2_pairs_with_their_scores():
    rec = {"prompt": "x", "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1],
           "label": {"source": "human", "likert": [5, 1, 7], "flags": [[], ["untrue"], []]}}
    pairs = ranking_to_preferences(rec)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("r2", "r0"), ("r2", "r1"), ("r0", "r1")]
    assert pairs[1]["label"]["likert"] == {"chosen": 7, "rejected": 1}
    assert pairs[1]["label"]["flags"] == {"chosen": [], "rejected": ["untrue"]}
    assert pairs[1]["label"]["pair"] == [2, 1] and pairs[1]["label"]["source"] == "human"


def test_identical_responses_give_no_pair():
    rec = {"prompt": "x", "responses": ["same", "same", "other"], "ranking": [0, 1, 2],
           "label": {"likert": [4, 4, 4], "flags": [[], [], []]}}
    assert len(ranking_to_preferences(rec)) == 2


def test_time_and_url_helpers():
    import datetime as dt

    assert iso_utc(dt.datetime(2024, 5, 1, 9, 30, 5, 123)) == "2024-05-01T09:30:05Z"
    assert normalize_url("postgresql://u@h:5/d") == "postgresql+psycopg://u@h:5/d"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
