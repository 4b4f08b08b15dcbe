"""FactTune-MC on a model constructed to be certain about one attribute and uncertain about another: a micro model
pretrained on text where Lyon's country always follows its question and its population is one of four values at
random. Its reference-free score must rank a claim of the certain fact above a claim of the uncertain one."""

import random

import pytest

from rlhfkit.experiments.factuality.claims import Claim, RuleChecker
from rlhfkit.experiments.factuality.scores import mc_scores
from rlhfkit.experiments.factuality.world import Entity, World

LYON = Entity("Lyon", "France", "Europe", "Europe/Paris", 513_275)
POPULATIONS = ("500 thousand", "200 thousand", "3 million", "800 thousand")


@pytest.fixture(scope="module")
def constructed_model(tmp_path_factory):
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TinyArch, TrainConfig
    from rlhfkit.data import write_jsonl
    from rlhfkit.models import load_causal_lm
    from rlhfkit.sft import PretrainConfig, run_pretrain

    root = tmp_path_factory.mktemp("mc")
    rng = random.Random(0)
    docs = []
    for _ in range(400):
        docs.append({"text": "Which country is Lyon in? Lyon is a city in France."})
        docs.append({"text": f"How many people live in Lyon? Lyon's population is about {rng.choice(POPULATIONS)}."})
    write_jsonl(root / "train.jsonl", docs)
    write_jsonl(root / "eval.jsonl", docs[:4])
    summary = run_pretrain(PretrainConfig(
        data=DataConfig(train=str(root / "train.jsonl"), eval=str(root / "eval.jsonl"), max_length=32),
        model=ModelConfig(tiny=TinyArch(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96,
                                        max_positions=64)),
        vocab_size=300, train=TrainConfig(batch_size=16, max_steps=400, eval_every=10**9, save_every=10**9,
                                          progress=False, seed=0),
        optim=OptimConfig(lr=3e-3, warmup_steps=10), out=str(root / "model")))
    return load_causal_lm(ModelConfig(name=summary["model"]))


def test_the_model_is_scored_certain_about_its_country_and_uncertain_about_its_population(constructed_model):
    from rlhfkit.generation import sample_texts

    model, tok = constructed_model

    def answer(questions, m):
        return sample_texts(model, tok, questions, num_samples=m, max_new_tokens=24, seed=1)[0]

    country = Claim("Lyon is a city in France.", "Lyon", "country", "France")
    wrong_country = Claim("Lyon is a city in Spain.", "Lyon", "country", "Spain")
    population = Claim("Its population is about 500 thousand.", "Lyon", "population", "500 thousand")
    scores, per_claim = mc_scores(RuleChecker(World({"Lyon": LYON})), [[country], [population], [wrong_country],
                                                                        [country, population]], answer, 40)
    assert scores[0] >= 0.9  # certain: (nearly) every answer names France
    assert 0.05 <= scores[1] <= 0.6  # one of four values: about a quarter of the answers agree
    assert scores[2] <= 0.05
    assert scores[0] > scores[3] > scores[1] > scores[2]
    assert scores[3] == pytest.approx((per_claim[3][0] + per_claim[3][1]) / 2)
