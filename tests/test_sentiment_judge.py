"""The sentiment experiment's optional LM-judged win rate vs SFT (`--judge`): the judge stage on a fabricated
evaluation with a fake backend (every count checked by hand), the report's column and line, nothing changed
without a judge, a killed or repeated stage served from the judgement cache, the checks before the first stage,
and the smoke preset end to end with a judge model whose answer is fixed by construction."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from fixed_judge import build_fixed_judge

from rlhfkit import cli, report
from rlhfkit.config import parse, save
from rlhfkit.errors import RlhfkitError
from rlhfkit.experiments import sentiment
from rlhfkit.experiments.runner import EVALUATION, Experiment, run_stage
from rlhfkit.experiments.sentiment import (JUDGE_CALL_SECONDS, PRESETS, SentimentConfig, judge_calls, judge_question,
                                           stage_judge, stage_seconds, stages_for, stale_stages)
from rlhfkit.judges import Completion, make_judge

# Five held-out prompts, of which the judge is asked about the first four (--judge-prompts 4). VADER, the gold
# reward, scores "great ..." 0.62, "bad ..." -0.54, "okay" 0.23, "meh" -0.08, "same" 0, "great but awful awful"
# -0.75 (the prompts add nothing).
PROMPTS = ["The film", "The story", "The cast", "The plot", "The end"]
SFT = ["bad movie", "great film", "same", "okay", "not judged"]
DPO = ["great movie", "bad film", "same", "meh", "not judged either"]
PPO = ["great zzz", "great story", "great", "great but awful awful", "nor this one"]


def _responses(message: str) -> tuple[str, str]:
    """(response A, response B) of a message rendered with the built-in pairwise template."""
    first, rest = message.split("[Response A]\n", 1)[1].split("\n\n[Response B]\n", 1)
    return first, rest.split("\n\n", 1)[0]


def _answer(message: str) -> Completion:
    """Prefers a response saying "great" to one that does not, answers "A" when both or neither do (a position
    bias: a tie once both orders are asked), and babbles about anything saying "zzz" (unparseable)."""
    first, second = _responses(message)
    if "zzz" in first + second:
        return Completion("???")
    if ("great" in first) != ("great" in second):
        return Completion("A" if "great" in first else "B")
    return Completion("A")


class FakeBackend:
    """Answers with `_answer`; counts calls and keeps the messages; fails after `fail_after` answers."""

    identity = "fake:judge"

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.messages = fail_after, []

    def complete(self, calls, max_tokens):
        for i, call in enumerate(calls):
            if self.fail_after is not None and len(self.messages) >= self.fail_after:
                raise RlhfkitError("backend went away")
            self.messages.append(call.messages[-1][1])
            yield i, _answer(call.messages[-1][1])


def _entry(method: str, label: str, completions: list[str]) -> dict:
    return {"method": method, "label": label, "seed": 0, "beta": None, "checkpoints": [],
            "win_rate_vs_sft": None, "completions": completions}


def _experiment(tmp_path: Path, monkeypatch, backend: FakeBackend | None, **options) -> Experiment:
    """An experiment whose evaluation is the fabricated one above, judged by `backend`."""
    cfg = replace(PRESETS["smoke"], out=str(tmp_path), judge_prompts=4, judge_retries=0,
                  judge_cache=str(tmp_path / "judgements.sqlite"), **options)
    if not (tmp_path / EVALUATION).exists():
        methods = [_entry("sft", "SFT", SFT), _entry("dpo", "DPO", DPO), _entry("ppo", "PPO", PPO)]
        (tmp_path / EVALUATION).write_text(json.dumps({"prompts": PROMPTS, "methods": methods}))
    monkeypatch.setattr(sentiment, "build_judge", lambda c: make_judge(c.judge, c, "pairwise", backend=backend))
    return Experiment(cfg, tmp_path, {})


def _judged(tmp_path: Path) -> dict[str, dict]:
    return {m["method"]: m for m in json.loads((tmp_path / EVALUATION).read_text())["methods"]}


def test_the_judge_stage_counts_wins_ties_and_agreement_by_hand(tmp_path, monkeypatch):
    backend = FakeBackend()
    result = stage_judge(_experiment(tmp_path, monkeypatch, backend, judge="hf:anything"))
    methods = _judged(tmp_path)
    # DPO: a win (great vs bad), a loss (bad vs great), identical texts (a tie, not asked), neither says great
    # (both orders "A": order-inconsistent, a tie). 4 verdicts: rate (1 + 2/2) / 4; Wilson(0.5, 4) by hand.
    # The judge named a side twice, both times the gold reward's.
    dpo = methods["dpo"]["judge_win_rate_vs_sft"]
    assert {k: dpo[k] for k in ("wins", "losses", "ties", "n", "rate", "unparseable", "order_inconsistent",
                                "identical", "gold_agreement", "n_prompts", "both_orders", "judge")} == {
        "wins": 1, "losses": 1, "ties": 2, "n": 4, "rate": 0.5, "unparseable": 0, "order_inconsistent": 1,
        "identical": 1, "gold_agreement": {"agree": 2, "n": 2}, "n_prompts": 4, "both_orders": True,
        "judge": "fake:judge"}
    assert (dpo["low"], dpo["high"]) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    assert dpo["order_inconsistent_share"] == 0.25 and dpo["mean_prob_a"] is None  # no log-probs from this judge
    assert dpo["template"].startswith("pairwise@")
    # PPO: "zzz" is unparseable (left out of n), both say great (a tie), two wins; of the two wins, the gold
    # reward prefers PPO's "great" (0.62 > 0) but SFT's "okay" (0.23 > -0.75): rate (2 + 1/2) / 3
    ppo = methods["ppo"]["judge_win_rate_vs_sft"]
    assert {k: ppo[k] for k in ("wins", "losses", "ties", "n", "unparseable", "order_inconsistent", "identical",
                                "gold_agreement")} == {
        "wins": 2, "losses": 0, "ties": 1, "n": 3, "unparseable": 1, "order_inconsistent": 1, "identical": 0,
        "gold_agreement": {"agree": 1, "n": 2}}
    assert (ppo["rate"], ppo["low"], ppo["high"]) == pytest.approx((2.5 / 3, 0.3100, 0.9824), abs=1e-4)
    # SFT is not judged against itself, the fifth prompt is not asked about, nothing else in the entries changed
    assert "judge_win_rate_vs_sft" not in methods["sft"]
    assert not [m for m in backend.messages if "judged" in m or "nor this" in m]
    assert {k: v for k, v in methods["ppo"].items() if k != "judge_win_rate_vs_sft"} == _entry("ppo", "PPO", PPO)
    # 3 DPO pairs and 4 PPO pairs, each asked in both orders
    assert len(backend.messages) == 14 and result["counts"]["backend_calls"] == 14
    assert (result["prompts"], result["methods"], result["identical"]) == (4, 2, 1)


def test_one_order_only_and_the_position_bias_it_leaves(tmp_path, monkeypatch):
    backend = FakeBackend()
    stage_judge(_experiment(tmp_path, monkeypatch, backend, judge="hf:anything", judge_both_orders=False))
    dpo = _judged(tmp_path)["dpo"]["judge_win_rate_vs_sft"]
    # asked once, "meh" vs "okay" gets the judge's "A": a win for DPO that both orders made a tie
    assert (dpo["wins"], dpo["losses"], dpo["ties"], dpo["order_inconsistent"]) == (2, 1, 1, 0)
    assert dpo["both_orders"] is False and len(backend.messages) == 3 + 4


def test_a_killed_judge_stage_resumes_from_the_cache_and_a_rerun_pays_nothing(tmp_path, monkeypatch):
    evaluation = tmp_path / EVALUATION
    with pytest.raises(RlhfkitError, match="backend went away"):
        run_stage(_experiment(tmp_path, monkeypatch, FakeBackend(fail_after=5), judge="hf:anything"),
                  "judge", stage_judge, 1, 1)
    assert not (tmp_path / "stages" / "judge.json").exists()
    assert "judge_win_rate_vs_sft" not in evaluation.read_text()  # nothing half-written
    resumed = FakeBackend()
    first = run_stage(_experiment(tmp_path, monkeypatch, resumed, judge="hf:anything"), "judge", stage_judge, 1, 1)
    assert len(resumed.messages) == 14 - 5 and first["counts"]["cache_hits"] == 5
    judged = _judged(tmp_path)
    (tmp_path / "stages" / "judge.json").unlink()  # the stage runs again: every answer comes from the cache
    again = FakeBackend()
    second = run_stage(_experiment(tmp_path, monkeypatch, again, judge="hf:anything"), "judge", stage_judge, 1, 1)
    assert again.messages == [] and second["counts"]["cache_hits"] == 14 and "backend_calls" not in second["counts"]
    assert _judged(tmp_path) == judged


def test_without_a_judge_the_stage_does_nothing_and_costs_nothing(tmp_path, monkeypatch):
    exp = _experiment(tmp_path, monkeypatch, None)
    monkeypatch.setattr(sentiment, "build_judge", lambda c: pytest.fail("no judge without --judge"))
    text = (tmp_path / EVALUATION).read_text()
    assert stage_judge(exp) == {"skipped": "no --judge"}
    assert (tmp_path / EVALUATION).read_text() == text
    assert stage_seconds(PRESETS["smoke"])["judge"] == 0.0
    # with one: per judged prompt (24 held-out prompts, fewer than 64), 9 entries (4 DPO betas, preferred-FT,
    # unlikelihood, PPO, PPO-GT, best-of-N) in 2 orders, per replicate
    judged = replace(PRESETS["smoke"], judge="hf:")
    assert judge_calls(judged) == 24 * 9 * 2 and stage_seconds(judged)["judge"] == 432 * JUDGE_CALL_SECONDS
    assert judge_calls(replace(judged, judge_prompts=10, judge_both_orders=False, seeds=2)) == 10 * 9 * 2


# ---------------------------------------------------------------------------------------------------- report
def _methods(tmp_path: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "completions"} for m in _judged(tmp_path).values()]


def test_the_report_shows_the_judged_column_and_how_it_was_measured(tmp_path, monkeypatch):
    stage_judge(_experiment(tmp_path, monkeypatch, FakeBackend(), judge="hf:anything"))
    paths = report.write_report(tmp_path / "report", {"methods": _methods(tmp_path)})
    md = Path(paths["markdown"]).read_text()
    assert "| win rate vs SFT | LM-judged win rate vs SFT |" in md
    rows = md.splitlines()
    assert "| DPO | — | — | — | — | — | — | 0.500 \\[0.150, 0.850\\] |" in rows
    assert "| PPO | — | — | — | — | — | — | 0.833 \\[0.310, 0.982\\] |" in rows
    assert "| SFT | — | — | — | — | — | — | — |" in rows  # no judged win rate against itself
    note = next(line for line in md.splitlines() if line.startswith("LM-judged win rate vs SFT: judge fake:judge"))
    assert "template pairwise@" in note and "on the first 4 held-out prompts" in note and "both orders" in note
    # pooled: 8 verdicts, 2 order-inconsistent, 1 unparseable, 1 identical; agreement 3 of 4, Wilson by hand
    assert "Of 8 verdicts: 2 \\(25%\\) order-inconsistent, counted as ties; 1 unparseable, left out; 1 between " \
           "identical completions" in note
    assert "3 of 4 \\(0.750 \\[0.301, 0.954\\]; 0.5 is chance\\)" in note and "GPT-4" in note
    html = Path(paths["html"]).read_text()
    assert "<th>LM-judged win rate vs SFT</th>" in html and "<p>LM-judged win rate vs SFT: judge" in html
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["methods"][1]["judge_win_rate_vs_sft"]["gold_agreement"] == {"agree": 2, "n": 2}


def test_the_report_without_a_judge_is_as_before(tmp_path, monkeypatch):
    _experiment(tmp_path, monkeypatch, None)
    paths = report.write_report(tmp_path / "report", {"methods": _methods(tmp_path)})
    for key in ("markdown", "html", "json"):
        assert "judge" not in Path(paths[key]).read_text().lower(), key
    assert "| DPO | — | — | — | — | — | — |" in Path(paths["markdown"]).read_text().splitlines()


# ------------------------------------------------------------------------------- options and early checks
def test_help_yaml_and_the_saved_config_know_the_judge_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experiment", "sentiment", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--judge STR" in out and "--judge-prompts INT" in out and "--judge-url STR" in out
    (tmp_path / "c.yaml").write_text("judge: 'hf:'\njudge-prompts: 8\njudge_both_orders: false\n")
    cfg = parse(SentimentConfig, ["--config", str(tmp_path / "c.yaml"), "--judge-retries", "1"],
                default=PRESETS["smoke"])
    assert (cfg.judge, cfg.judge_prompts, cfg.judge_both_orders, cfg.judge_retries, cfg.eval_prompts) == (
        "hf:", 8, False, 1, 24)
    save(cfg, tmp_path / "config.yaml")  # what a run records, read back as a config
    assert parse(SentimentConfig, ["--config", str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize("options, message", [
    (["--judge", "gpt4"], "--judge gpt4: the experiment's judge is a language model, hf:MODEL or openai:MODEL"),
    (["--judge", "hf:", "--judge-template", "nope.txt"], "judge template nope.txt: no such file"),
    (["--judge", "hf:", "--judge-template", "pointwise"], "is pointwise, but a pairwise judge is needed"),
    (["--judge", "hf:./no-such-model"], "model directory not found: ./no-such-model"),
    (["--judge", "openai:"], "needs a model name"),
    (["--judge", "hf:", "--judge-prompts", "0"], "--judge-prompts must be >= 1, got 0"),
    (["--judge", "hf:", "--judge-norm", "x.jsonl"], "--judge-norm 'x.jsonl' does nothing here"),
    (["--judge-url", "http://localhost:8000/v1"], "--judge-url 'http://localhost:8000/v1' does nothing here: "
                                                  "only --judge uses it"),
])
def test_a_bad_judge_is_refused_before_the_first_stage(options, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["experiment", "sentiment", "--preset", "smoke", "--out", str(out), *options]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlhfkit: error: ") and message in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ end to end
def test_a_finished_run_is_judged_by_running_it_again_with_a_judge(tmp_path):
    off, on = PRESETS["smoke"], replace(PRESETS["smoke"], judge="hf:", judge_prompts=8)
    (tmp_path / "stages").mkdir()
    assert stale_stages(on, tmp_path) == []  # not run yet: nothing to redo
    (tmp_path / "stages" / "judge.json").write_text(json.dumps({"skipped": "no --judge", "status": "done"}))
    assert stale_stages(off, tmp_path) == [] and stale_stages(on, tmp_path) == ["judge"]
    (tmp_path / "stages" / "judge.json").write_text(json.dumps({"asked": judge_question(on), "status": "done"}))
    assert stale_stages(on, tmp_path) == [] and stale_stages(off, tmp_path) == []  # off: what was judged stays
    assert stale_stages(replace(on, judge_prompts=16), tmp_path) == ["judge"]
    assert stale_stages(replace(on, judge_cache="none", judge_timeout=5.0), tmp_path) == []  # how, not what


def test_the_smoke_experiment_judged_afterwards_by_a_judge_that_always_answers_a(smoke_run, tmp_path, capsys):
    """The finished smoke run (its stage files copied), run again through the CLI with --judge: only the judge
    stage and the report run. The judge is a local model that answers "A" whatever it is asked, with P(A) / P(B) =
    3 in either order: every pair asked is an order-inconsistent tie and P(method better) averages to exactly 1/2
    over the two orders."""
    cfg, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "*.bin"))
    judge_dir = build_fixed_judge(tmp_path / "always-a", "A", "B", 3.0)
    argv = ["experiment", "sentiment", "--preset", "smoke", "--seeds", "2", "--out", str(out), "--threads", "1",
            "--judge", f"hf:{judge_dir}", "--judge-prompts", "6", "--judge-cache", str(tmp_path / "c.sqlite")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "judge: finished with other options than these; it and the report run again" in err
    assert "judge: finished in" in err and "report: finished in" in err
    assert err.count("skipped") == len(stages_for(cfg)) - 2
    results = json.loads((out / "results.json").read_text())
    judged = [m["judge_win_rate_vs_sft"] for m in results["methods"] if m["method"] != "sft"]
    assert len(judged) == 9 * 2  # every method and best-of-N, both replicates
    assert sum(6 - j["identical"] for j in judged) > 0  # some completions differ from SFT's: the judge was asked
    for j in judged:
        asked = 6 - j["identical"]
        assert (j["n"], j["ties"], j["rate"], j["order_inconsistent"], j["unparseable"]) == (6, 6, 0.5, asked, 0)
        assert j["gold_agreement"] == {"agree": 0, "n": 0} and j["judge"].startswith(f"hf:{judge_dir}@")
        assert j["mean_prob_a"] == (None if asked == 0 else pytest.approx(0.5, abs=1e-4))
    md = (out / "report.md").read_text()
    assert "LM-judged win rate vs SFT |" in md and "; 0 unparseable, left out;" in md
    assert "no pair where both named a side" in md
