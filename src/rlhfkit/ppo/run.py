"""A PPO run: load the policy, reference, scorer and prompts, then drive `ppo_step` with the shared step runner
(`rlhfkit.loop.StepLoop`: progress, checkpoints with the KL controller's state, snapshots, exact resume)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from rlhfkit import config as config_lib
from rlhfkit import rl
from rlhfkit.errors import RlhfkitError
from rlhfkit.ppo.advantages import ADVANTAGE_ESTIMATORS
from rlhfkit.ppo.config import PPOConfig, check_config
from rlhfkit.logprobs import Reference
from rlhfkit.ppo.policy import PolicyWithValue
from rlhfkit.ppo.step import Trainer, ppo_step
from rlhfkit.tracking import Run, check_run_dir, say


def read_inputs(cfg: PPOConfig) -> tuple[list[tuple[dict, tuple[str, int]]], list[str] | None]:
    """The prompts records with their (file, line), and the PPO-ptx corpus texts (None when the mix is off): read
    and validated before any model loads, so bad data costs no time."""
    from rlhfkit.data import read_located, read_records

    located = read_located(cfg.prompts, "prompts")
    ptx = [r["text"] for r in read_records(cfg.ptx.data, "corpus")] if cfg.ptx.coef > 0 else None
    return located, ptx


def ptx_stream(cfg: PPOConfig, tokenizer: Any, texts: list[str] | None) -> Iterator | None:
    """Endless batches of packed corpus blocks for PPO-ptx (None when the mix is off)."""
    if texts is None:
        return None
    from rlhfkit.data import collate
    from rlhfkit.sft import pack_corpus

    blocks = pack_corpus(tokenizer, texts, cfg.ptx.max_length)
    if not blocks:
        raise RlhfkitError(f"{cfg.ptx.data}: no corpus block of at least 2 tokens for --ptx.data")
    batches = [blocks[i: i + cfg.ptx.batch_size] for i in range(0, len(blocks), cfg.ptx.batch_size)]
    return (collate(b, tokenizer.pad_token_id) for b in itertools.cycle(batches))


def build_trainer(cfg: PPOConfig, accelerator: Any, located: list[tuple[dict, tuple[str, int]]],
                  ptx_texts: list[str] | None = None) -> Trainer:
    """The policy, reference, scorer, optimizer and KL controller of a run on the prompts records `located`
    (with their file and line, named when a prompt leaves no room to respond in the model's context)."""
    from rlhfkit.data import encode_prompt
    from rlhfkit.generation import check_room
    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.loop import make_optimizer
    from rlhfkit.models import apply_lora, load_causal_lm

    scorer = make_scorer(cfg.reward, cfg)  # fail on a bad spec before loading the model
    policy, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed)
    texts = [r["prompt"] for r, _ in located]
    prompts = [encode_prompt(tokenizer, t)[-cfg.max_prompt_length:] for t in texts]
    check_room(policy, prompts, cfg.sampling.max_new_tokens, [where for _, where in located])
    policy = apply_lora(policy, cfg.lora)
    reference = Reference.of(policy).to(accelerator.device)
    module = PolicyWithValue(policy, value_head=ADVANTAGE_ESTIMATORS[cfg.advantage].value_head)
    optimizer, scheduler = make_optimizer(module, cfg.optim, cfg.train.max_steps or 1)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    controller = (rl.AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
                  else rl.FixedKLController(cfg.kl.coef))
    return Trainer(cfg, module, reference, optimizer, scheduler, accelerator, tokenizer, scorer, controller,
                   prompts, texts, ptx_stream(cfg, tokenizer, ptx_texts), [where for _, where in located])


def run_ppo(cfg: PPOConfig) -> dict[str, Any]:
    """Train; returns a summary (first/last score and KL, final beta, timings, paths)."""
    from rlhfkit.loop import StepLoop, finish_stage, make_accelerator
    from rlhfkit.models import check_lora

    check_config(cfg)
    check_lora(cfg.model, cfg.lora)
    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    located, ptx_texts = read_inputs(cfg)
    accelerator = make_accelerator(cfg.train)
    tr = build_trainer(cfg, accelerator, located, ptx_texts)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)  # after the model loads: a failure leaves no run
    state: dict[str, Any] = {"first": None}  # the first step's score and KL, kept across a resume
    loop = StepLoop(cfg.train, run, accelerator, cfg.train.max_steps or 1, tr.inner.policy, tr.tokenizer,
                    postfix=lambda m: {"score": f"{m['objective/score']:.3f}", "kl": f"{m['objective/kl']:.3f}"},
                    extra=lambda: {"kl": tr.controller.state_dict(), "kl_coef": tr.controller.value,
                                   "first": state["first"]})
    start, extra = loop.resume()
    if extra:
        tr.controller.load_state_dict(extra["kl"])
        state["first"] = extra.get("first")
    say(f"ppo: {len(tr.prompts)} prompts, {cfg.advantage} advantages, {loop.total} steps of "
        f"{cfg.train.batch_size} x {cfg.group_size} completions, reward {cfg.reward}")

    def step(s: int) -> dict[str, float]:
        metrics = ppo_step(tr, s)
        state["first"] = state["first"] or {k: metrics[k] for k in ("objective/score", "objective/kl")}
        run.log(s + 1, metrics)
        return metrics

    ran = loop.run_steps(start, step)
    summary = {"step": ran.step, "status": ran.status, "first": state["first"], "last": ran.metrics,
               "kl_coef": tr.controller.value, "seconds": ran.seconds}
    return finish_stage(accelerator, tr.inner.policy, tr.tokenizer, run, summary, ran.snapshot, cfg.lora.merge)


def main(argv: list[str]) -> int:
    summary = run_ppo(config_lib.parse(PPOConfig, argv, prog="rlhfkit ppo"))
    last = summary["last"]
    if last:
        say(f"ppo: score {summary['first']['objective/score']:.3f} -> {last['objective/score']:.3f}, "
            f"KL {last['objective/kl']:.3f}, beta {summary['kl_coef']:.4g}; model saved to {summary['model']}")
    return 0
