"""Online (iterated) DPO: each round samples K responses per prompt from the current policy, labels every pair
with a judge, and trains one more round on them; pi_ref stays the initial model. Held-out prompts are fixed
before round 1 and never trained on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfkit.data import encode_prompt, prompt_key, read_located, split_summary, split_train_eval, write_jsonl
from rlhfkit.dpo.config import DPOConfig
from rlhfkit.dpo.objective import encode_pairs
from rlhfkit.dpo.offline import Setup, check_pairs_fit, finish, setup, train_round
from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import check_room, sample_texts
from rlhfkit.sampling import SamplingConfig
from rlhfkit.tracking import Run, check_run_dir, say

if TYPE_CHECKING:
    from rlhfkit.labeling.auto import Labeler


def sample_candidates(s: Setup, prompts: list[str], round_index: int) -> list[dict]:
    """K responses per prompt from the current policy -> candidates records (policy = round-<i>)."""
    cfg = s.cfg
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              samples_per_prompt=cfg.samples_per_prompt, batch_size=64)
    texts, _ = sample_texts(s.model, s.tokenizer, prompts, sampling, seed=cfg.train.seed * 1000 + round_index)
    return [{"prompt": p, "responses": t, "policy": f"round-{round_index}"} for p, t in zip(prompts, texts)]


def label_round(s: Setup, candidates: list[dict], round_index: int, labeler: Labeler,
                where: dict[str, tuple[str, int]] | None = None) -> tuple[list[dict], dict]:
    """Preference records for the round's candidates (the labeler drops and counts empty responses). where:
    each prompt's (file, line) in --prompts, named if the judge returns NaN for one of its responses."""
    from rlhfkit.labeling.auto import label_with

    located = [where[prompt_key(c["prompt"])] for c in candidates] if where is not None else None
    records, counts = label_with(labeler, candidates, "pairs", s.cfg.label_temperature, s.cfg.train.seed + round_index,
                                 where=located)
    return records, dict(counts)


def online_round_records(s: Setup, train_prompts: list[str], held_prompts: list[str], round_index: int,
                         labeler: Labeler, round_dir: Path,
                         where: dict[str, tuple[str, int]] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Sample and label one online round; returns (training pairs, held-out pairs, label counts).

    Training pairs come only from the train prompts and held-out pairs only from the held-out prompts, so no
    held-out prompt is trained on in any round. Writes round-<i>/{candidates,preferences}.jsonl (training)
    and round-<i>/eval_{candidates,preferences}.jsonl (held out). where: as for `label_round`.
    """
    held = {prompt_key(p) for p in held_prompts}
    candidates = sample_candidates(s, train_prompts + held_prompts, round_index)  # one sampling pass for both
    records, counts = label_round(s, candidates, round_index, labeler, where)
    train_recs = [r for r in records if prompt_key(r["prompt"]) not in held]
    eval_recs = [r for r in records if prompt_key(r["prompt"]) in held]
    if s.accelerator.is_main_process:
        write_jsonl(round_dir / "candidates.jsonl", [c for c in candidates if prompt_key(c["prompt"]) not in held])
        write_jsonl(round_dir / "preferences.jsonl", train_recs)
        write_jsonl(round_dir / "eval_candidates.jsonl", [c for c in candidates if prompt_key(c["prompt"]) in held])
        write_jsonl(round_dir / "eval_preferences.jsonl", eval_recs)
    return train_recs, eval_recs, counts


def run_online(cfg: DPOConfig) -> dict[str, Any]:
    """Iterated DPO: each round samples from the current policy, labels the pairs with the judge and trains on
    them; pi_ref stays the initial model. Round i keeps round-<i>/{candidates,preferences}.jsonl and model.

    The prompts are split by prompt once, before any round (<out>/heldout_prompts.jsonl): held-out prompts are
    sampled and labelled every round for that round's eval pairs and the sampled KL, and never trained on."""
    from rlhfkit.labeling.auto import make_labeler, refuse_noise

    if not cfg.prompts:
        raise RlhfkitError("--online needs --prompts FILE (prompts JSONL)")
    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    located = read_located(cfg.prompts, "prompts", cfg.data.columns,
                           skip_invalid=cfg.data.invalid == "skip")[: cfg.data.max_records]
    refuse_noise(cfg.judge, "pairs", cfg.label_temperature)
    labeler = make_labeler(cfg.judge, cfg)  # fail before any sampling if the judge cannot be built
    prompts = [r["prompt"] for r, _ in located]
    where = {}
    for rec, at in located:
        where.setdefault(prompt_key(rec["prompt"]), at)  # a repeated prompt is named by its first line
    s = setup(cfg)
    check_room(s.model, [encode_prompt(s.tokenizer, p) for p in prompts], cfg.max_new_tokens,
               [where[prompt_key(p)] for p in prompts])
    run = Run(cfg.out, cfg, is_main=s.accelerator.is_main_process)
    train_prompts, held_prompts = split_train_eval(prompts, cfg.data.eval_fraction, cfg.train.seed)
    if s.accelerator.is_main_process:
        write_jsonl(run.dir / "heldout_prompts.jsonl", [{"prompt": p} for p in held_prompts])
    rounds = []
    for i in range(1, cfg.rounds + 1):
        round_dir = run.dir / f"round-{i}"
        train_recs, eval_recs, counts = online_round_records(s, train_prompts, held_prompts, i, labeler, round_dir,
                                                             where)
        train_pairs, _ = encode_pairs(s.tokenizer, train_recs, cfg.data)
        eval_pairs, _ = encode_pairs(s.tokenizer, eval_recs, cfg.data)
        if not train_pairs:
            raise RlhfkitError(f"round {i}: the judge left no usable pair ({counts}); sample more or longer")
        check_pairs_fit(s, train_pairs + eval_pairs)
        say(f"dpo online round {i}/{cfg.rounds}: {len(train_pairs)} pairs from {len(train_prompts)} prompts, "
            f"{len(eval_pairs)} held out from {len(held_prompts)} prompts {counts}")
        round_run = Run(round_dir, cfg, s.accelerator.is_main_process)
        summary = train_round(s, train_pairs, eval_pairs, round_run, held_prompts or train_prompts)
        summary["split"] = split_summary(train_recs, eval_recs)
        rounds.append(finish(s, round_run, {**summary, "labeling": counts}))
        run.log(i, {f"round/{k}": v for k, v in rounds[-1]["eval"].items()})
    return finish(s, run, {**rounds[-1], "rounds": rounds, "online": True, "judge": cfg.judge})
