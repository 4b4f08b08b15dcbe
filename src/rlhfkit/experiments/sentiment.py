"""The DPO paper's controlled sentiment generation (Rafailov et al. 2023, section 6.1), end to end, offline.

x = a short prefix of a movie review; the policy must continue it with positive sentiment; the gold reward is
a sentiment scorer (here VADER, standing in for the paper's IMDb classifier) of prefix + completion.

    corpus -> pretrain (tiny) -> SFT on reviews -> prompts -> sample K completions per prompt from SFT
    -> label pairs with the gold reward -> reward model -> from the same SFT reference: DPO at several beta,
    PPO with the learned reward, PPO with the gold reward (PPO-GT), preferred-FT, unlikelihood, best-of-N
    -> evaluate every snapshot of every run on held-out prompts -> (optional) a language-model judge's win rate
    of each method against SFT -> report (frontier, beta vs KL, findings).

The stages run through `rlhfkit.experiments.runner` (this module's `RECIPE`): a re-run skips finished stages,
and the stage that was killed continues from its last checkpoint. `--seeds N` repeats everything after SFT
(sampling, labelling, the reward model, every method) with seeds seed+1 .. seed+N-1 under `<out>/seed<k>/`;
evaluation pools every replicate's checkpoints, on the same held-out prompts, into each method's frontier, so
the findings' intervals include training noise.

With `--judge hf:MODEL` or `--judge openai:MODEL` a judge stage after evaluation asks a language model, in both
orders, whether each method's completion or SFT's is better on the first --judge-prompts held-out prompts, the way
the DPO paper measured win rates with GPT-4; the report puts that win rate beside the gold one, with the judge's
agreement with the gold reward on the same pairs. Presets leave it off. A finished run is judged by running it
again with --judge: only the judge stage and the report run.

Departures from the paper: VADER instead of a trained classifier,
Rotten Tomatoes snippets instead of IMDb, a pretrained-from-scratch tiny model instead of GPT-2 large.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TinyArch
from rlhfkit.experiments import runner
from rlhfkit.experiments.runner import EVALUATION, Experiment, NamedStage, Recipe, Stage, checkpoint_entry, policies
from rlhfkit.judges.judge import JudgeOptions, LMJudge, PairVerdict, is_lm_judge, make_backend, make_judge


@dataclass(frozen=True)
class SentimentConfig(JudgeOptions):
    """rlhfkit experiment sentiment: the whole pipeline on the embedded corpus, ending in a report."""

    preset: Literal["tiny", "smoke", "smollm2"] = "tiny"
    """Sizes: tiny (2 CPU cores, ~20 min), smoke (toy sizes, < 3 min), smollm2 (SmolLM2-135M; sized for a GPU)."""
    out: str = ""
    """Run directory (default runs/sentiment-<preset>)."""
    seed: int = 0
    """Seed of every stage."""
    threads: int | None = None
    """torch threads for every stage (None: torch's default)."""
    arch: TinyArch = field(default_factory=TinyArch)
    """Architecture of the tiny model pretrained from scratch (tiny and smoke presets)."""
    base_model: str = "tiny"
    """Start from this model instead of pretraining ('tiny' pretrains; 'smollm2' or a directory skips it)."""
    corpus_records: int | None = None
    """Cap on pretraining records (None: all)."""
    vocab_size: int = 4096
    """BPE vocabulary trained on the corpus."""
    pretrain_steps: int = 800
    """Pretraining optimizer steps (batch 32 x 64 tokens)."""
    pretrain_minutes: float | None = None
    """Stop pretraining after this long even if steps remain (None: no cap; presets set none, so results depend
    on the seed, never on the machine's speed). A capped pretraining is reported as stopped by its time limit at
    the step it reached, everywhere, and a re-run keeps it (the later stages build on it)."""
    sft_steps: int = 150
    """SFT optimizer steps on review (prefix, continuation) pairs."""
    batch_size: int = 32
    """Micro-batch of pretraining and SFT."""
    train_prompts: int = 256
    """Prompts for preference data, PPO and best-of-N training use (prefixes of training reviews)."""
    eval_prompts: int = 400
    """Held-out prompts every checkpoint is evaluated on (prefixes of held-out reviews); 400 keeps a
    checkpoint's reward standard error near 0.02 on the tiny preset."""
    seeds: int = 1
    """Replicates of every post-SFT stage (seed, seed+1, ...), pooled in evaluation; each extra seed costs about
    the post-SFT part of the run again."""
    samples_per_prompt: int = 4
    """Completions sampled per prompt from SFT; all C(K,2) pairs are labelled, exact ties dropped."""
    max_new_tokens: int = 24
    """Longest completion (sampling, PPO and evaluation)."""
    fixed_length: bool = False
    """Forbid EOS before max_new_tokens everywhere, so no method can gain reward by writing longer text."""
    rm_epochs: int = 2
    """Reward-model epochs over the preference pairs."""
    dpo_betas: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)
    """One DPO run per beta (>= 4 for the beta-vs-KL fit)."""
    dpo_epochs: int = 2
    """Epochs of DPO, preferred-FT and unlikelihood over the pairs."""
    dpo_batch_size: int = 16
    """Pairs per DPO step."""
    dpo_lr: float = 5e-4
    """Learning rate of DPO and its baselines."""
    ppo_steps: int = 40
    """PPO rollout batches."""
    ppo_batch_size: int = 16
    """Prompts per PPO rollout batch."""
    ppo_lr: float = 2e-4
    """PPO learning rate."""
    ppo_kl_coef: float = 0.05
    """PPO's initial KL coefficient (adaptive towards ppo_kl_target)."""
    ppo_kl_target: float = 4.0
    """KL (nats) the adaptive controller aims at."""
    best_of: tuple[int, ...] = (2, 4, 8, 16)
    """N values of the best-of-N baseline (scored by the learned reward model)."""
    snapshots: int = 5
    """Snapshots per training run evaluated for the frontier (plus the final model)."""
    kl_budget: float = 5.0
    """KL (nats) within which the per-method table compares best rewards."""
    judge: str = ""
    """A language model that judges each method's final completions against SFT's, beside the gold win rate:
    hf:MODEL ('hf:' = SmolLM2-135M-Instruct, offline), or openai:MODEL with --judge-url; "" = none (the presets)."""
    judge_prompts: int = 64
    """Held-out prompts the judge is asked about per method (the first N evaluation prompts)."""
    lora_r: int = 0
    """LoRA rank for SFT, DPO and PPO (0: full fine-tuning; used by the smollm2 preset on small machines)."""
    keep_checkpoints: bool = False
    """Keep each finished stage's resumable checkpoints (model + optimizer state, ~4x the model on disk). By
    default they are deleted once the stage is done: a finished stage is never re-run, its models stay."""


PRESETS: dict[str, SentimentConfig] = {
    "tiny": SentimentConfig(),
    "smoke": SentimentConfig(
        preset="smoke", arch=TinyArch(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96),
        corpus_records=3000, vocab_size=512, pretrain_steps=40, sft_steps=20,
        batch_size=16, train_prompts=24, eval_prompts=24, samples_per_prompt=4, max_new_tokens=12, rm_epochs=1,
        dpo_betas=(0.1, 0.3, 1.0, 3.0), dpo_epochs=1, dpo_batch_size=8, dpo_lr=1e-3, ppo_steps=4,
        ppo_batch_size=8, best_of=(2, 4), snapshots=1, kl_budget=5.0),
    "smollm2": SentimentConfig(
        preset="smollm2", base_model="smollm2", pretrain_steps=0, sft_steps=200, batch_size=16, train_prompts=512,
        eval_prompts=512, max_new_tokens=32, dpo_lr=5e-6, ppo_lr=5e-6, dpo_batch_size=8, ppo_batch_size=16,
        ppo_steps=100),
}


Exp = Experiment[SentimentConfig]
"""One run of this experiment, or one of its seed replicates."""


# --------------------------------------------------------------------------------------------------- stages
def stage_corpus(exp: Exp) -> dict:
    from rlhfkit.corpus import build_corpus

    return {"counts": build_corpus(exp.path("corpus"), seed=exp.cfg.seed)}


def stage_pretrain(exp: Exp) -> dict:
    return runner.pretrain_stage(exp, "corpus", max_records=exp.cfg.corpus_records,
                                 max_minutes=exp.cfg.pretrain_minutes)


def stage_sft(exp: Exp) -> dict:
    cfg = exp.cfg
    return runner.sft_stage(exp, DataConfig(
        train=str(exp.path("corpus", "sft_train.jsonl")), max_length=64, max_prompt_length=24,
        max_records=cfg.sft_steps * cfg.batch_size * 2, eval_fraction=0.05))


def stage_prompts(exp: Exp) -> dict:
    """Training prompts: prefixes of training reviews (the SFT prompts); eval prompts: held-out prefixes."""
    from rlhfkit.data import read_records, write_jsonl

    cfg = exp.cfg
    rng = random.Random(cfg.seed)
    sft = [r["prompt"] for r in read_records(exp.shared("corpus", "sft_train.jsonl"), "sft")]
    train = rng.sample(sorted(set(sft)), cfg.train_prompts)
    held = [r["prompt"] for r in read_records(exp.path("corpus", "prompts_heldout.jsonl"), "prompts")]
    held = rng.sample(held, cfg.eval_prompts)
    write_jsonl(exp.path("prompts_train.jsonl"), ({"prompt": p} for p in train))
    write_jsonl(exp.path("prompts_eval.jsonl"), ({"prompt": p} for p in held))
    return {"train": len(train), "eval": len(held)}


def _prompts(exp: Exp, split: str) -> list[str]:
    from rlhfkit.data import read_records

    return [r["prompt"] for r in read_records(exp.shared(f"prompts_{split}.jsonl"), "prompts")]


def _load_sft(exp: Exp) -> tuple[Any, Any]:
    from rlhfkit.models import load_causal_lm

    return load_causal_lm(ModelConfig(name=exp.results["sft"]["model"]))


def _min_new(exp: Exp) -> int:
    return exp.cfg.max_new_tokens if exp.cfg.fixed_length else 0


def stage_sample(exp: Exp) -> dict:
    from rlhfkit.data import write_jsonl
    from rlhfkit.generation import sample_texts

    cfg = exp.cfg
    model, tok = _load_sft(exp)
    prompts = _prompts(exp, "train")
    texts, lengths = sample_texts(model, tok, prompts, num_samples=cfg.samples_per_prompt,
                                  max_new_tokens=cfg.max_new_tokens, min_new_tokens=_min_new(exp), seed=cfg.seed)
    records = [{"prompt": p, "responses": t, "policy": "sft"} for p, t in zip(prompts, texts)]
    every = [n for ns in lengths for n in ns]
    return {"candidates": write_jsonl(exp.path("candidates.jsonl"), records), "mean_length": sum(every) / len(every)}


def stage_label(exp: Exp) -> dict:
    from rlhfkit.data import read_records, write_jsonl
    from rlhfkit.labeling.auto import label_candidates
    from rlhfkit.labeling.gold import vader_score

    cands = read_records(exp.path("candidates.jsonl"), "candidates")
    records, counts = label_candidates(cands, vader_score, "pairs", 0.0, exp.cfg.seed, "vader", "gold")
    return {"pairs": write_jsonl(exp.path("preferences.jsonl"), records), "counts": dict(counts)}


def stage_reward_model(exp: Exp) -> dict:
    from rlhfkit.reward import RMConfig, run_rm_train

    cfg = exp.cfg
    summary = run_rm_train(RMConfig(
        data=DataConfig(train=str(exp.path("preferences.jsonl")), max_length=96, max_prompt_length=32,
                        eval_fraction=0.15),
        model=ModelConfig(name=exp.results["sft"]["model"]),
        train=exp.train_cfg(batch_size=8, epochs=cfg.rm_epochs, eval_every=10**9, save_every=10**9),
        optim=OptimConfig(lr=1e-3 if cfg.base_model == "tiny" else 1e-5, warmup_steps=5),
        out=str(exp.path("rm"))))
    return summary


# -------------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One policy-improvement run from the SFT reference. `method` is the name the report's findings use."""

    name: str
    method: str
    label: str
    beta: float | None
    train: Callable[[Exp, "Method"], dict]


def train_offline(exp: Exp, m: Method, loss: str) -> dict:
    """DPO or one of its baselines on the labelled pairs (rlhfkit.dpo)."""
    from rlhfkit.config import LoRAConfig
    from rlhfkit.dpo import DPOConfig, run_dpo

    cfg = exp.cfg
    return run_dpo(DPOConfig(
        data=DataConfig(train=str(exp.path("preferences.jsonl")), max_length=64, max_prompt_length=24,
                        eval_fraction=0.1),
        model=ModelConfig(name=exp.results["sft"]["model"]), lora=LoRAConfig(r=cfg.lora_r), loss=loss,
        beta=m.beta if m.beta is not None else 0.1, kl_prompts=0,
        train=exp.train_cfg(batch_size=cfg.dpo_batch_size, epochs=cfg.dpo_epochs, eval_every=10**9,
                            save_every=10**9, snapshots=cfg.snapshots),
        optim=OptimConfig(lr=cfg.dpo_lr, warmup_steps=5), out=str(exp.path("runs", m.name))))


def train_ppo(exp: Exp, m: Method, reward: str) -> dict:
    """PPO with a KL penalty (adaptive beta) against `reward` (rlhfkit.ppo)."""
    from rlhfkit.config import LoRAConfig
    from rlhfkit.ppo import KLConfig, PPOConfig, run_ppo

    cfg = exp.cfg
    return run_ppo(PPOConfig(
        model=ModelConfig(name=exp.results["sft"]["model"]), lora=LoRAConfig(r=cfg.lora_r),
        prompts=str(exp.shared("prompts_train.jsonl")), reward=reward, advantage="gae",
        max_new_tokens=cfg.max_new_tokens, min_new_tokens=_min_new(exp), minibatch_size=cfg.ppo_batch_size // 2,
        eos_penalty=False,  # the paper scores every completion as it is; a penalty teaches the tiny model to stop early
        kl=KLConfig(coef=cfg.ppo_kl_coef, adaptive=True, target=cfg.ppo_kl_target, horizon=cfg.ppo_steps * 10),
        train=exp.train_cfg(batch_size=cfg.ppo_batch_size, max_steps=cfg.ppo_steps, save_every=10**9, log_every=1,
                            snapshots=cfg.snapshots),
        optim=OptimConfig(lr=cfg.ppo_lr, warmup_steps=0, schedule="constant"), out=str(exp.path("runs", m.name))))


def methods_for(cfg: SentimentConfig) -> list[Method]:
    """Every method of the DPO paper's Figure 2 (left), in the order they run."""
    ms = [Method(f"dpo-beta{b:g}", "dpo", f"DPO beta={b:g}", b, lambda e, m: train_offline(e, m, "dpo"))
          for b in cfg.dpo_betas]
    ms.append(Method("preferred-ft", "preferred_ft", "Preferred-FT", None,
                     lambda e, m: train_offline(e, m, "preferred_ft")))
    ms.append(Method("unlikelihood", "unlikelihood", "Unlikelihood", None,
                     lambda e, m: train_offline(e, m, "unlikelihood")))
    ms.append(Method("ppo", "ppo", "PPO (learned reward)", None,
                     lambda e, m: train_ppo(e, m, f"rm:{e.results['reward_model']['model']}")))
    ms.append(Method("ppo-gt", "ppo_gt", "PPO-GT (gold reward)", None, lambda e, m: train_ppo(e, m, "vader")))
    return ms


# ----------------------------------------------------------------------------------------------- evaluation
def _sampling(exp: Exp) -> Any:
    from rlhfkit.sampling import SamplingConfig

    return SamplingConfig(max_new_tokens=exp.cfg.max_new_tokens, min_new_tokens=_min_new(exp))


def evaluate_run(exp: Exp, run_dir: Path, reference: Any, tok: Any, prompts: list[str]) -> dict:
    """Reward and KL at every saved policy of a run (cached in <run>/eval.json), and the final completions."""
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.labeling.gold import vader_score
    from rlhfkit.models import load_causal_lm

    cache = run_dir / "eval.json"
    if cache.exists():
        return json.loads(cache.read_text())
    checkpoints, completions = [], []
    for step, path in policies(run_dir):
        policy, _ = load_causal_lm(ModelConfig(name=str(path)), tokenizer=tok)
        ev = evaluate_policy(policy, reference, tok, prompts, vader_score, _sampling(exp), seed=exp.cfg.seed + 1)
        checkpoints.append(checkpoint_entry(step, ev))
        completions = ev.completions
    result = {"checkpoints": checkpoints, "completions": completions}
    cache.write_text(json.dumps(result))
    return result


def evaluate_best_of_n(exp: Exp, policy: Any, tok: Any, prompts: list[str]) -> dict:
    """Best-of-N under the learned reward model, judged by the gold reward; KL is the analytic bound."""
    from rlhfkit.bestofn import best_of_n
    from rlhfkit.evaluate import best_of_n_kl
    from rlhfkit.labeling.gold import make_scorer, vader_score
    from rlhfkit.stats import mean_ci

    scorer = make_scorer(f"rm:{exp.results['reward_model']['model']}")
    checkpoints, completions = [], []
    for n in exp.cfg.best_of:
        picks = best_of_n(policy, tok, prompts, scorer, n, max_new_tokens=exp.cfg.max_new_tokens,
                          min_new_tokens=_min_new(exp), seed=exp.cfg.seed + 1)
        completions = [p.response for p in picks]
        rewards = [float(r) for r in vader_score(prompts, completions)]
        gold = mean_ci(rewards)
        lengths = [float(len(tok(c, add_special_tokens=False)["input_ids"]) + 1) for c in completions]
        checkpoints.append({"step": n, "kl": best_of_n_kl(n), "kl_se": 0.0, "reward": gold.mean,
                            "reward_se": gold.se, "length": sum(lengths) / len(lengths), "n": gold.n,
                            "rewards": rewards, "kls": [best_of_n_kl(n)] * len(rewards), "lengths": lengths})
    return {"checkpoints": checkpoints, "completions": completions}


def stage_evaluate(exp: Exp) -> dict:
    """Every method of every seed replicate, every snapshot, the same held-out prompts; win rate vs SFT of each
    final policy."""
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.labeling.gold import vader_score
    from rlhfkit.stats import win_rate

    prompts = _prompts(exp, "eval")
    reference, tok = _load_sft(exp)
    sft = evaluate_policy(reference, reference, tok, prompts, vader_score, _sampling(exp), seed=exp.cfg.seed + 1)
    entries = [{"method": "sft", "label": "SFT (reference)", "seed": 0, "beta": None,
                "checkpoints": [checkpoint_entry(0, sft)], "win_rate_vs_sft": None, "completions": sft.completions}]
    bon_label = f"Best-of-N (N={','.join(str(n) for n in exp.cfg.best_of)}; learned RM)"
    bon = Method("best-of-n", "best_of_n", bon_label, None, lambda e, m: {})
    for k in range(exp.cfg.seeds):
        replica = exp.replica(k)
        suffix = f" (seed {replica.cfg.seed})" if exp.cfg.seeds > 1 else ""
        runs = [(m, evaluate_run(replica, replica.path("runs", m.name), reference, tok, prompts))
                for m in methods_for(exp.cfg)]
        runs.append((bon, evaluate_best_of_n(replica, reference, tok, prompts)))
        for m, ev in runs:
            wr = win_rate(vader_score(prompts, ev["completions"]), sft.scores).to_dict()
            entries.append({"method": m.method, "label": m.label + suffix, "seed": k, "beta": m.beta,
                            "checkpoints": ev["checkpoints"], "win_rate_vs_sft": wr, "completions": ev["completions"]})
    exp.path(EVALUATION).write_text(json.dumps({"prompts": prompts, "methods": entries}))
    return {"methods": len(entries), "prompts": len(prompts)}


def build_judge(cfg: SentimentConfig) -> LMJudge:
    """The pairwise judge --judge names, with the --judge-* options (its own function so that a test can hand the
    judge stage a fake backend)."""
    return make_judge(cfg.judge, cfg, "pairwise")


def _gold_side(a: float, b: float) -> str | None:
    """The side the gold reward prefers, in a verdict's terms; None for equal rewards (no preference)."""
    return "a" if a > b else "b" if b > a else None


def judged_entry(verdicts: list[PairVerdict], gold_a: list[float], gold_b: list[float], label: str) -> dict:
    """One method's `judge_win_rate_vs_sft` from its verdicts (a = the method, b = SFT) and the gold rewards of
    the same completions: the win rate and its counts (`evaluate.verdict_win_rate`), and how often the judge named
    the side the gold reward prefers among the pairs where both named one (`gold_agreement`), the measure of
    how far to trust the judge on this task."""
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.evaluate import verdict_win_rate

    try:
        wr, extra = verdict_win_rate(verdicts)
    except RlhfkitError as err:
        raise RlhfkitError(f"judge stage, {label}: {err}") from None
    sides = [(v.winner, _gold_side(a, b)) for v, a, b in zip(verdicts, gold_a, gold_b, strict=True)]
    decided = [(judge, gold) for judge, gold in sides if judge in ("a", "b") and gold is not None]
    return {**wr.to_dict(), **extra,
            "gold_agreement": {"agree": sum(judge == gold for judge, gold in decided), "n": len(decided)}}


def stage_judge(exp: Exp) -> dict:
    """With --judge, the LM-judged win rate against SFT of every evaluated method's final policy; without it,
    nothing. On the first --judge-prompts held-out prompts, each method's completion (as A) is judged against
    SFT's (as B), every pair asked at once so the judge batches them. A pair of identical texts is a tie without
    asking: it carries no preference, and a position-biased judge would only add an order-inconsistent verdict.
    Each non-SFT entry of EVALUATION gains `judge_win_rate_vs_sft` (`judged_entry`, plus the judge's and the
    template's identity, the prompts judged, the identical pairs and whether both orders were asked). Every answer
    is cached (--judge-cache): a re-run after a crash pays only for the questions not yet answered."""
    from rlhfkit.data import write_text
    from rlhfkit.labeling.gold import vader_score

    cfg = exp.cfg
    if not cfg.judge:
        return {"skipped": "no --judge"}
    ev = json.loads(exp.path(EVALUATION).read_text())
    n = min(cfg.judge_prompts, len(ev["prompts"]))
    prompts = ev["prompts"][:n]
    sft = next(m for m in ev["methods"] if m["method"] == "sft")["completions"][:n]
    entries = [m for m in ev["methods"] if m["method"] != "sft"]
    asked = [(k, i) for k, m in enumerate(entries) for i in range(n) if m["completions"][i] != sft[i]]
    judge = build_judge(cfg)
    answered = dict(zip(asked, judge.compare([prompts[i] for _, i in asked],
                                             [entries[k]["completions"][i] for k, i in asked],
                                             [sft[i] for _, i in asked])))
    same = PairVerdict("tie", judge=judge.identity, template=judge.template.identity)
    gold_sft = vader_score(prompts, sft)
    for k, m in enumerate(entries):
        verdicts = [answered.get((k, i), same) for i in range(n)]
        result = judged_entry(verdicts, vader_score(prompts, m["completions"][:n]), gold_sft, m["label"])
        m["judge_win_rate_vs_sft"] = {**result, "identical": sum((k, i) not in answered for i in range(n)),
                                      "judge": judge.identity, "template": judge.template.identity,
                                      "n_prompts": n, "both_orders": cfg.judge_both_orders}
    write_text(exp.path(EVALUATION), json.dumps(ev))  # atomic: the report never reads half an evaluation
    return {"judge": judge.identity, "template": judge.template.identity, "prompts": n, "methods": len(entries),
            "identical": n * len(entries) - len(asked), "counts": dict(judge.counts), "asked": judge_question(cfg)}


def judge_question(cfg: SentimentConfig) -> dict[str, Any]:
    """The options that decide what the judge stage measures (not how: the cache, timeouts, concurrency)."""
    return {"judge": cfg.judge, "url": cfg.judge_url, "template": cfg.judge_template, "prompts": cfg.judge_prompts,
            "both_orders": cfg.judge_both_orders}


def stale_stages(cfg: SentimentConfig, out: Path) -> list[str]:
    """["judge"] when --judge asks what the finished judge stage did not answer: a run finished without a judge (or
    with another) is judged by running it again with --judge, every other stage kept. Without --judge, whatever
    was judged stays in the report."""
    done = out / "stages" / "judge.json"
    if not cfg.judge or not done.exists():
        return []
    return [] if json.loads(done.read_text()).get("asked") == judge_question(cfg) else ["judge"]


# --------------------------------------------------------------------------------------------------- report
def _beta_fit(methods: list[dict]) -> Any:
    from rlhfkit.findings import beta_kl_points
    from rlhfkit.stats import fit_beta_kl

    betas, kls = beta_kl_points(methods)
    if len(set(betas)) < 2 or any(k <= 0 for k in kls):
        return None  # the finding then reads "inconclusive", with the reason in its evidence
    return fit_beta_kl(betas, kls)


def report_entries(exp: Exp, methods: list[dict]) -> dict:
    """The report's entries only this experiment has: the beta-vs-KL fit, the reward model's held-out accuracy,
    the data counts, and the DPO paper's claims as findings."""
    from rlhfkit.findings import sentiment_findings

    fit = _beta_fit(methods)
    held = exp.results["reward_model"].get("held_out", {})
    return {
        "beta_fit": fit,
        "reward_model": {"accuracy": held.get("accuracy"), "n": held.get("n"),
                         "calibration": held.get("calibration", [])},
        "findings": sentiment_findings(methods, fit, seed=exp.cfg.seed),
        "data": {"label": exp.results["label"].get("counts"), "corpus": exp.results["corpus"].get("counts")},
    }


# ------------------------------------------------------------------------------------------------------ run
SHARED_STAGES: list[NamedStage] = [
    ("corpus", stage_corpus), ("pretrain", stage_pretrain), ("sft", stage_sft), ("prompts", stage_prompts),
]
REPLICATED_STAGES: list[NamedStage] = [
    ("sample", stage_sample), ("label", stage_label), ("reward_model", stage_reward_model),
]
"""Repeated per seed replicate, followed by every method's training run."""
ESTIMATES = {  # seconds per stage on 2 CPU cores, used only for the ETA line (the judge's: `stage_seconds`)
    "tiny": {"corpus": 3, "pretrain": 215, "sft": 25, "prompts": 1, "sample": 5, "label": 1, "reward_model": 18,
             "method": 19, "ppo": 31, "ppo-gt": 30, "evaluate": 130, "report": 2},  # measured 2026-11-29, README
    "smoke": {"corpus": 3, "pretrain": 10, "sft": 5, "prompts": 1, "sample": 3, "label": 1, "reward_model": 5,
              "method": 8, "evaluate": 30, "report": 3},
    "smollm2": {"corpus": 3, "pretrain": 0, "sft": 600, "prompts": 1, "sample": 120, "label": 2,
                "reward_model": 300, "method": 600, "evaluate": 900, "report": 5},
}


JUDGE_CALL_SECONDS = 0.8
"""One pairwise question to SmolLM2-135M-Instruct (`--judge hf:`) on 2 busy CPU cores, batches of 8 (measured: 64
questions in 50 s; the smoke preset's 230 in 149 s); for the ETA line only."""


def judge_calls(cfg: SentimentConfig) -> int:
    """Questions the judge stage asks at most: per judged prompt, every method of every replicate and best-of-N,
    in one or both orders (identical pairs and cached answers cost less)."""
    if not cfg.judge:
        return 0
    entries = (len(methods_for(cfg)) + 1) * cfg.seeds
    return min(cfg.judge_prompts, cfg.eval_prompts) * entries * (2 if cfg.judge_both_orders else 1)


def stage_seconds(cfg: SentimentConfig) -> dict[str, float]:
    """The ETA line's seconds per stage: the preset's estimates, and the judge stage's (0 without --judge)."""
    return {**ESTIMATES[cfg.preset], "judge": judge_calls(cfg) * JUDGE_CALL_SECONDS}


def replicated_stages(cfg: SentimentConfig) -> list[NamedStage]:
    """One seed replicate's stages: sampling, labelling, the reward model, then every method."""
    return REPLICATED_STAGES + [(m.name, (lambda e, m=m: m.train(e, m))) for m in methods_for(cfg)]


def check_judge(cfg: SentimentConfig) -> None:
    """--judge and its options, before the first stage and without loading a model or asking a server anything:
    the spec names a language model, the template is a pairwise one, a local model directory exists, an openai:
    judge has a model name and a URL or OPENAI_API_KEY; without --judge, no --judge-* option is set."""
    from rlhfkit.config import refuse_unused
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.judges.templates import load_template
    from rlhfkit.models import resolve_model_name

    if not cfg.judge:
        names = [f.name for f in fields(JudgeOptions)] + ["judge_prompts"]
        refuse_unused(cfg, dict.fromkeys(names, "only --judge uses it"))
        return
    if not is_lm_judge(cfg.judge):
        raise RlhfkitError(f"--judge {cfg.judge}: the experiment's judge is a language model, hf:MODEL or "
                           "openai:MODEL (the gold reward, VADER, already gives the report's win rate)")
    refuse_unused(cfg, {"judge_norm": "it normalises a reward model's scores (rm:PATH), not a language model's"})
    if cfg.judge_prompts < 1:
        raise RlhfkitError(f"--judge-prompts must be >= 1, got {cfg.judge_prompts}")
    load_template(cfg.judge_template, "pairwise")
    kind, _, name = cfg.judge.partition(":")
    if kind == "hf" and name:  # "hf:" is SmolLM2, converted when the judge stage first loads it
        resolve_model_name(name)
    if kind == "openai":
        make_backend(cfg.judge, cfg)  # builds the client only: no request is sent


def check_inputs(cfg: SentimentConfig) -> None:
    """What the experiment needs from outside, checked before its first stage rather than when a stage reaches
    it (the gold reward is first used after SFT, the plots at the very end): the corpus packages, VADER,
    matplotlib, a base model directory other than the presets' models, and the judge (`check_judge`)."""
    import importlib.util

    from rlhfkit.corpus import chitchat_path, rotten_tomatoes_path
    from rlhfkit.errors import MissingPackageError
    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.models import resolve_model_name

    rotten_tomatoes_path(), chitchat_path()
    make_scorer("vader")
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingPackageError("matplotlib", "the experiment's report plots", no_deps=False)
    if cfg.base_model not in ("tiny", "smollm2"):  # smollm2 is found (or converted) by the first stage's load
        resolve_model_name(cfg.base_model)
    check_judge(cfg)


RECIPE: Recipe[SentimentConfig] = Recipe(
    name="sentiment", title="Controlled sentiment generation", config=SentimentConfig, presets=PRESETS,
    shared=SHARED_STAGES, replicated=replicated_stages, final=[("evaluate", stage_evaluate), ("judge", stage_judge)],
    estimates=stage_seconds, report=report_entries, check=check_inputs, redo=stale_stages)


def stages_for(cfg: SentimentConfig) -> list[Stage]:
    """(replicate, name, function) of every stage in run order: the shared stages, then each replicate's
    post-SFT stages (sampling, labelling, reward model, every method), then evaluation, the judge (which does
    nothing without --judge) and the report."""
    return runner.plan(RECIPE, cfg)


def run_experiment(cfg: SentimentConfig) -> dict:
    """Run (or resume) every stage; returns the report stage's result."""
    return runner.run(RECIPE, cfg)


def main(argv: list[str]) -> int:
    """`rlhfkit experiment sentiment`."""
    return runner.main(RECIPE, argv)
