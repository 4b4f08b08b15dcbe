"""FactTune (Tian, Mitchell et al. 2023, "Fine-tuning Language Models for Factuality"), end to end, offline.

x = "Tell me about <city>."; the policy writes a short profile; its claims are checked against a knowledge source
(GeoNames cities, `world`). SFT teaches profiles of cities the model has read about and of cities it never saw,
so it learns to state facts it does not know (the behaviour-cloning trap). FactTune then scores sampled profiles
for truthfulness and trains DPO to prefer the more truthful one of each pair:

    knowledge source -> tiny world: pretraining text (some cities often, some rarely, some never) and SFT data
    -> pretrain (tiny) -> SFT -> sample K profiles per training prompt -> score each: FactTune-FS (share of claims
    the source supports), FactTune-MC (reference-free: the SFT model's agreement with each claim over M sampled
    answers to a question about it) and the number of claims (the "detailed" baseline, RLHF without a factuality
    signal) -> every pair with different scores, the three sets cut to the same size -> DPO on each, same budget
    -> evaluate SFT and the three policies on held-out cities (seen in pretraining or not): correct and incorrect
    facts per response, share correct, abstentions, length, each with an interval -> report with the paper's
    claims as findings (`rlhfkit.findings.factuality_findings`).

Stages run through `rlhfkit.experiments.runner`: a re-run skips finished stages and a killed training stage resumes
from its last checkpoint; `--seeds N` repeats everything after SFT. The tiny and smoke presets check claims with
the exact rule-based checker of the tiny world's language; the smollm2 preset starts from SmolLM2-135M-Instruct and
checks its free-text profiles with a language model (`--checker hf:` or `openai:MODEL`, `lm_claims.LMChecker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TinyArch
from rlhfkit.experiments import runner
from rlhfkit.experiments.factuality.world import WorldSizes
from rlhfkit.experiments.runner import EVALUATION, Experiment, NamedStage, Recipe
from rlhfkit.judges.judge import JudgeOptions


@dataclass(frozen=True)
class FactualityConfig(JudgeOptions):
    """rlhfkit experiment factuality: FactTune on profiles of real cities, ending in a report."""

    preset: Literal["tiny", "smoke", "smollm2"] = "tiny"
    """Sizes: tiny (2 CPU cores, < 20 min), smoke (toy sizes, < 3 min), smollm2 (SmolLM2-135M; sized for a GPU)."""
    out: str = ""
    """Run directory (default runs/factuality-<preset>)."""
    seed: int = 0
    """Seed of every stage (and of the world: which cities land in which split)."""
    seeds: int = 1
    """Replicates of every post-SFT stage (seed, seed+1, ...), pooled in evaluation."""
    threads: int | None = None
    """torch threads for every stage (None: torch's default)."""
    keep_checkpoints: bool = False
    """Keep each finished stage's resumable checkpoints (deleted by default once the stage is done)."""
    world: WorldSizes = field(default_factory=WorldSizes)
    """Entities per split and how often pretraining mentions them."""
    arch: TinyArch = field(default_factory=TinyArch)
    """Architecture of the tiny model pretrained from scratch (tiny and smoke presets)."""
    base_model: str = "tiny"
    """Start from this model instead of pretraining ('tiny' pretrains; 'smollm2' or a directory skips it)."""
    vocab_size: int = 2048
    """BPE vocabulary trained on the pretraining text."""
    pretrain_steps: int = 1200
    """Pretraining optimizer steps (batch_size x 64 tokens)."""
    sft_steps: int = 150
    """SFT optimizer steps on profiles and one-attribute questions (0: the base model is the SFT policy)."""
    batch_size: int = 32
    """Micro-batch of pretraining and SFT."""
    samples_per_prompt: int = 8
    """Profiles sampled per training prompt from SFT (K); all C(K,2) pairs with different scores are used."""
    max_new_tokens: int = 48
    """Longest profile (sampling and evaluation)."""
    checker: str = "rules"
    """How claims are extracted and verified: 'rules' (exact, the tiny world's language) or a language model,
    hf:MODEL ('hf:' = SmolLM2-135M-Instruct, offline) or openai:MODEL with --judge-url (LM-based, FactScore-style)."""
    mc_samples: int = 8
    """FactTune-MC: answers sampled per question about a claim (M)."""
    mc_max_new_tokens: int = 24
    """Longest answer to a question about a claim."""
    dpo_beta: float = 0.5
    """DPO's beta for the three preference sets (0.5: at 0.1 the tiny policy drifts to longer profiles with more
    claims of every kind, whichever set it trains on)."""
    dpo_epochs: int = 2
    """Epochs of DPO over each (equal-size) preference set."""
    dpo_batch_size: int = 16
    """Pairs per DPO step."""
    dpo_lr: float = 1e-4
    """DPO learning rate."""
    eval_samples: int = 8
    """Profiles sampled per held-out prompt and method (per-prompt values are their means)."""
    lora_r: int = 0
    """LoRA rank for SFT and DPO (0: full fine-tuning)."""


PRESETS: dict[str, FactualityConfig] = {
    "tiny": FactualityConfig(),
    "smoke": FactualityConfig(
        preset="smoke", arch=TinyArch(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96),
        world=WorldSizes(sft_entities=60, train_entities=32, eval_entities=32, often_mentions=6, rarely_mentions=2),
        vocab_size=512, pretrain_steps=300, sft_steps=100, batch_size=16, samples_per_prompt=4, max_new_tokens=32,
        mc_samples=3, mc_max_new_tokens=20, dpo_epochs=1, dpo_batch_size=8, dpo_lr=1e-3, eval_samples=1),
    "smollm2": FactualityConfig(
        preset="smollm2", base_model="smollm2", pretrain_steps=0, sft_steps=0, checker="hf:",
        world=WorldSizes(sft_entities=0, train_entities=256, eval_entities=256), samples_per_prompt=4,
        max_new_tokens=96, mc_samples=6, mc_max_new_tokens=32, dpo_lr=5e-6, dpo_batch_size=8, eval_samples=1),
}
METHODS = (("facttune_fs", "FactTune-FS (DPO, reference-based)", "fs"),
           ("facttune_mc", "FactTune-MC (DPO, reference-free)", "mc"),
           ("detailed", "Detailed (DPO, more claims: no factuality signal)", "detail"))
"""(method, label, score that orders its pairs)."""

Exp = Experiment[FactualityConfig]


# --------------------------------------------------------------------------------------------- helpers
def _checker(exp: Exp) -> Any:
    from rlhfkit.experiments.factuality.lm_claims import make_checker
    from rlhfkit.experiments.factuality.world import load_world

    return make_checker(exp.cfg.checker, load_world(), exp.cfg)


def _prompts(exp: Exp, split: str) -> list[dict]:
    return [json.loads(line) for line in exp.shared("world", f"prompts_{split}.jsonl").read_text().splitlines()]


def _load(path: str, tok: Any = None) -> tuple[Any, Any]:
    from rlhfkit.models import load_causal_lm

    return load_causal_lm(ModelConfig(name=path), tokenizer=tok)


# --------------------------------------------------------------------------------------------------- stages
def stage_world(exp: Exp) -> dict:
    from rlhfkit.experiments.factuality.world import build_world

    return {"counts": build_world(exp.path("world"), exp.cfg.world, exp.cfg.seed)}


def stage_pretrain(exp: Exp) -> dict:
    return runner.pretrain_stage(exp, "world", save_every=200)


def stage_sft(exp: Exp) -> dict:
    if exp.cfg.sft_steps == 0:
        return {"model": exp.results["pretrain"]["model"], "skipped": "sft_steps 0: the base model is the SFT policy"}
    return runner.sft_stage(exp, DataConfig(train=str(exp.path("world", "sft_train.jsonl")), max_length=80,
                                            max_prompt_length=24, eval_fraction=0.05))


def stage_sample(exp: Exp) -> dict:
    """K profiles per training prompt from the SFT policy."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.generation import sample_texts

    cfg = exp.cfg
    model, tok = _load(exp.results["sft"]["model"])
    rows = _prompts(exp, "train")
    texts, _ = sample_texts(model, tok, [r["prompt"] for r in rows], num_samples=cfg.samples_per_prompt,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    records = [{**r, "responses": t} for r, t in zip(rows, texts)]
    return {"candidates": write_jsonl(exp.path("candidates.jsonl"), records)}


def stage_score(exp: Exp) -> dict:
    """Every sampled profile's claims, checked (FactTune-FS), the SFT model's agreement with each claim
    (FactTune-MC) and its claim count (the detailed baseline), in scored.jsonl."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.experiments.factuality.claims import check
    from rlhfkit.experiments.factuality.scores import mc_scores
    from rlhfkit.generation import sample_texts
    from rlhfkit.stats import mean_ci

    cfg = exp.cfg
    cands = [json.loads(line) for line in exp.path("candidates.jsonl").read_text().splitlines()]
    entities = [c["entity"] for c in cands for _ in c["responses"]]
    texts = [t for c in cands for t in c["responses"]]
    checker = _checker(exp)
    checked = check(checker, entities, texts)
    model, tok = _load(exp.results["sft"]["model"])

    def answer(questions: list[str], m: int) -> list[list[str]]:
        return sample_texts(model, tok, questions, num_samples=m, max_new_tokens=cfg.mc_max_new_tokens,
                            seed=cfg.seed + 7)[0]

    mc, per_claim = mc_scores(checker, [[c.claim for c in ch.claims] for ch in checked], answer, cfg.mc_samples)
    records, i = [], 0
    for c in cands:
        k = len(c["responses"])
        rows = range(i, i + k)
        records.append({**c, "fs": [checked[j].score for j in rows], "mc": [mc[j] for j in rows],
                        "detail": [float(len(checked[j].claims)) for j in rows],
                        "checked": [checked[j].to_dict() for j in rows], "agreement": [per_claim[j] for j in rows]})
        i += k
    both = [(f.score, m) for f, m in zip(checked, mc) if f.score is not None]
    summary = {"responses": len(texts), "with_claims": len(both),
               "fs": mean_ci([f for f, _ in both]).to_dict() if len(both) > 1 else None,
               "mc": mean_ci([m for _, m in both]).to_dict() if len(both) > 1 else None,
               "fs_mc_correlation": _correlation(both), "checker": checker.identity}
    write_jsonl(exp.path("scored.jsonl"), records)
    return summary


def _correlation(pairs: list[tuple[float, float]]) -> float | None:
    """Pearson correlation of FS and MC over responses (how far the reference-free score tracks the reference)."""
    import numpy as np

    if len(pairs) < 3:
        return None
    a = np.asarray(pairs, dtype=float)
    if a[:, 0].std() == 0 or a[:, 1].std() == 0:
        return None
    return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])


def stage_pairs(exp: Exp) -> dict:
    """All pairs with different scores under each of FS, MC and detail, cut to the same number of pairs. A score
    that ties on every prompt gives no pair: its method is not trained (listed in `untrained`, and the report's
    findings about it read inconclusive); all three tying is an error."""
    from rlhfkit.data import write_jsonl
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.experiments.factuality.scores import equal_budget, pair_records

    scored = [json.loads(line) for line in exp.path("scored.jsonl").read_text().splitlines()]
    prompts, responses = [s["prompt"] for s in scored], [s["responses"] for s in scored]
    sets, counts = {}, {}
    for name, _, key in METHODS:
        records, c = pair_records(prompts, responses, [s[key] for s in scored], f"facttune-{key}", exp.cfg.seed)
        counts[name] = dict(c)
        if records:
            sets[name] = records
    if not sets:
        raise RlhfkitError("no preference pair under any score: every sampled profile of each prompt scored the "
                           "same; sample more profiles per prompt (--samples-per-prompt) or train SFT longer")
    kept = equal_budget(sets, exp.cfg.seed)
    for name, records in kept.items():
        write_jsonl(exp.path(f"preferences_{name}.jsonl"), records)
        counts[name]["kept"] = len(records)
    return {"counts": counts, "pairs": len(next(iter(kept.values()))),
            "untrained": [name for name, _, _ in METHODS if name not in kept]}


def train_dpo(exp: Exp, method: str) -> dict:
    """DPO from the SFT policy on the method's preference set (none: not trained, see `stage_pairs`)."""
    from rlhfkit.config import LoRAConfig
    from rlhfkit.dpo import DPOConfig, run_dpo

    cfg = exp.cfg
    if method in exp.results["pairs"].get("untrained", []):
        return {"skipped": "no preference pair: every profile of each prompt got the same score"}
    return run_dpo(DPOConfig(
        data=DataConfig(train=str(exp.path(f"preferences_{method}.jsonl")), max_length=96, max_prompt_length=24,
                        eval_fraction=0.1),
        model=ModelConfig(name=exp.results["sft"]["model"]), lora=LoRAConfig(r=cfg.lora_r), loss="dpo",
        beta=cfg.dpo_beta, kl_prompts=0,
        train=exp.train_cfg(batch_size=cfg.dpo_batch_size, epochs=cfg.dpo_epochs, eval_every=10**9, save_every=10**9),
        optim=OptimConfig(lr=cfg.dpo_lr, warmup_steps=5), out=str(exp.path("runs", method))))


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_profiles(exp: Exp, model: Any, tok: Any, rows: list[dict], checker: Any) -> dict:
    """One policy on the held-out prompts: eval_samples profiles each, checked; per-prompt means."""
    from rlhfkit.experiments.factuality.claims import check
    from rlhfkit.generation import sample_texts

    cfg = exp.cfg
    k = cfg.eval_samples
    texts, lengths = sample_texts(model, tok, [r["prompt"] for r in rows], num_samples=k,
                                  max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1)
    checked = check(checker, [r["entity"] for r in rows for _ in range(k)], [t for ts in texts for t in ts])
    per = {key: [] for key in ("correct", "incorrect", "unverifiable", "claims", "share_correct", "abstained",
                               "length")}
    for i in range(len(rows)):
        own = checked[i * k:(i + 1) * k]
        scored = [c.score for c in own if c.score is not None]
        per["correct"].append(sum(c.supported for c in own) / k)
        per["incorrect"].append(sum(c.contradicted for c in own) / k)
        per["unverifiable"].append(sum(c.unverifiable for c in own) / k)
        per["claims"].append(sum(len(c.claims) for c in own) / k)
        per["share_correct"].append(sum(scored) / len(scored) if scored else None)
        per["abstained"].append(sum(not c.claims for c in own) / k)
        per["length"].append(sum(lengths[i]) / k)
    return {"completions": [t[0] for t in texts], "checked": [checked[i * k].to_dict() for i in range(len(rows))],
            "per_prompt": per}


def stage_evaluate(exp: Exp) -> dict:
    """SFT and every method of every replicate on the same held-out prompts, checked by the same checker."""
    from rlhfkit.data import write_text

    rows = _prompts(exp, "eval")
    checker = _checker(exp)
    reference, tok = _load(exp.results["sft"]["model"])
    entries = [{"method": "sft", "label": "SFT", "seed": 0, "pairs": None,
                **evaluate_profiles(exp, reference, tok, rows, checker)}]
    for k in range(exp.cfg.seeds):
        replica = exp.replica(k)
        suffix = f" (seed {replica.cfg.seed})" if exp.cfg.seeds > 1 else ""
        pairs = replica.results["pairs"]["pairs"]
        for method, label, _ in METHODS:
            if "model" not in replica.results[method]:
                continue  # not trained: no pair (the findings that need it read inconclusive)
            policy, _ = _load(replica.results[method]["model"], tok)
            entries.append({"method": method, "label": label + suffix, "seed": k, "pairs": pairs,
                            **evaluate_profiles(exp, policy, tok, rows, checker)})
    ev = {"prompts": [r["prompt"] for r in rows], "entities": [r["entity"] for r in rows],
          "groups": [r["group"] for r in rows], "checker": checker.identity,
          "samples_per_prompt": exp.cfg.eval_samples, "methods": entries}
    write_text(exp.path(EVALUATION), json.dumps(ev))
    return {"methods": len(entries), "prompts": len(rows), "checker": checker.identity}


# ------------------------------------------------------------------------------------------------------ run
SHARED_STAGES: list[NamedStage] = [("world", stage_world), ("pretrain", stage_pretrain), ("sft", stage_sft)]
ESTIMATES = {  # seconds per stage on 2 CPU cores, for the ETA line only
    "tiny": {"world": 1, "pretrain": 250, "sft": 22, "sample": 11, "score": 23, "pairs": 1, "method": 62,
             "evaluate": 51, "report": 1},
    "smoke": {"world": 3, "pretrain": 8, "sft": 4, "sample": 2, "score": 3, "pairs": 1, "method": 5,
              "evaluate": 5, "report": 3},
    "smollm2": {"world": 3, "pretrain": 0, "sft": 0, "sample": 300, "score": 1800, "pairs": 2, "method": 600,
                "evaluate": 1200, "report": 5},
}


def replicated_stages(cfg: FactualityConfig) -> list[NamedStage]:
    return [("sample", stage_sample), ("score", stage_score), ("pairs", stage_pairs)] + [
        (method, (lambda e, m=method: train_dpo(e, m))) for method, _, _ in METHODS]


def check_inputs(cfg: FactualityConfig) -> None:
    """The knowledge source, matplotlib, a base model directory, and the checker, before the first stage."""
    import importlib.util

    from rlhfkit.errors import MissingPackageError, RlhfkitError
    from rlhfkit.experiments.factuality.world import load_world
    from rlhfkit.models import resolve_model_name

    load_world()
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingPackageError("matplotlib", "the experiment's report plots", no_deps=False)
    if cfg.base_model not in ("tiny", "smollm2"):
        resolve_model_name(cfg.base_model)
    if cfg.base_model == "tiny" and cfg.pretrain_steps < 1:
        raise RlhfkitError("--pretrain-steps must be >= 1 when the base model is pretrained here (base_model tiny)")
    for name in ("samples_per_prompt", "mc_samples", "eval_samples"):
        if getattr(cfg, name) < 1:
            raise RlhfkitError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.samples_per_prompt < 2:
        raise RlhfkitError("--samples-per-prompt must be >= 2: pairs are made within a prompt's samples")
    check_checker(cfg)


def check_checker(cfg: FactualityConfig) -> None:
    """--checker and the --judge-* options, without loading a model or asking a server anything: "rules" takes no
    judge option; a language-model checker names hf:MODEL (an existing directory or hub id) or openai:MODEL with a
    URL or OPENAI_API_KEY, and the options its four claim templates do not read are refused."""
    from dataclasses import fields

    from rlhfkit.config import refuse_unused
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.judges.judge import is_lm_judge, make_backend
    from rlhfkit.models import resolve_model_name

    unused = {"judge_template": "the claim checker has its own four templates (docs/judges.md)",
              "judge_both_orders": "claims are not pairs: there is no order to swap",
              "judge_norm": "it normalises a reward model's scores, and the checker is a language model"}
    if cfg.checker == "rules":
        refuse_unused(cfg, dict.fromkeys([f.name for f in fields(JudgeOptions)], "only a language-model --checker "
                                         "asks a judge; 'rules' checks the tiny world's sentences exactly"))
        return
    if not is_lm_judge(cfg.checker):
        raise RlhfkitError(f"unknown claim checker '{cfg.checker}': use rules, hf:MODEL or openai:MODEL")
    refuse_unused(cfg, unused)
    kind, _, name = cfg.checker.partition(":")
    if kind == "hf" and name:  # "hf:" is SmolLM2, converted when the checker first loads it
        resolve_model_name(name)
    if kind == "openai":
        make_backend(cfg.checker, cfg)  # builds the client only: no request is sent


def _report(exp: Exp, methods: list[dict]) -> dict:
    from rlhfkit.experiments.factuality.report import report_entries

    return report_entries(exp, methods)


def _write(run_dir: Path, results: dict) -> dict:
    from rlhfkit.experiments.factuality.report import write_factuality_report

    return write_factuality_report(run_dir, results)


RECIPE: Recipe[FactualityConfig] = Recipe(
    name="factuality", title="Fine-tuning for factuality (FactTune)", config=FactualityConfig, presets=PRESETS,
    shared=SHARED_STAGES, replicated=replicated_stages, final=[("evaluate", stage_evaluate)],
    estimates=lambda cfg: ESTIMATES[cfg.preset], report=_report, check=check_inputs, write=_write)


def run_experiment(cfg: FactualityConfig) -> dict:
    """Run (or resume) every stage; returns the report stage's result."""
    return runner.run(RECIPE, cfg)


def main(argv: list[str]) -> int:
    """`rlhfkit experiment factuality`."""
    return runner.main(RECIPE, argv)
