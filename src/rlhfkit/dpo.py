"""DPO and its baselines (IPO, conservative DPO, preferred-FT, unlikelihood), offline and online.

    rlhfkit dpo --data.train prefs.jsonl --loss dpo --beta 0.1
    rlhfkit dpo --online --rounds 3 --prompts prompts.jsonl --judge vader
    rlhfkit eval beta-for-kl --target-kl 4 --runs runs/dpo-b0.1 runs/dpo-b0.5

Offline (Rafailov et al. 2023, eq. 7): every step runs the policy once on the batch's B pairs. By default each
pair is one row, its prompt laid out once and followed by both responses under a 4D attention mask that keeps
them apart (`rlhfkit.prefix`, exact: the prompt is not run twice); with `--no-shared-prefix` (or an attention
implementation without custom masks) a (2B, T) batch holds the B chosen responses in rows [0, B) and the B
rejected ones in rows [B, 2B). Either way the objective sees (2B,) log-probs, chosen first. The
reference log-probs are precomputed once before training and cached in the run directory (`ref_logps.pt`,
keyed by a hash of the tokenised data and the reference weights), or computed every step (`--ref-mode
per_step`). With LoRA the reference is the policy with its adapter disabled (no second model in memory); with
full fine-tuning a frozen copy is kept only when something needs pi_ref after training starts (per-step
reference, the sampled KL at evaluation, online rounds). Dropout is off whenever reference log-probs are taken.

The loss is chosen by a table lookup (`PAIR_LOSSES`) before training; `rlhfkit.loop.fit` only ever sees the
resulting objective. Diagnostics: implicit rewards beta * log(pi / pi_ref) (`rewards/*`) for every loss, so the
baselines can be compared on the same scale, and at evaluation the sequence-level KL(pi || pi_ref) estimated by
sampling from the policy on held-out prompts (`objective/kl`).

Online / iterated DPO: each round samples K responses per prompt from the current policy, labels every pair with a
gold scorer or reward model (`rlhfkit.labeling`), and trains one more round on those pairs; the reference stays the
initial model. Every round keeps its data and checkpoint under `round-<i>/`.

Known trap (DESIGN.md): a first response token shared by y_w and y_l contributes +g to the chosen side and -g to
the rejected side at the same logits, which cancel exactly: DPO cannot teach it (SFT must). `summary.json` counts
such pairs (`pairs_sharing_first_token`).

Departures from the paper: the baselines report the same beta-scaled implicit rewards as DPO (diagnostics only);
logits are computed only from the first response position onward (`logits_to_keep`), which changes nothing in
the loss and saves the LM head on prompt tokens.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import config as config_lib
from rlhfkit import losses, ops, prefix
from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import Encoded, TokenBatch, collate, encode_pair, ranking_to_pairs, split_train_eval
from rlhfkit.errors import RlhfkitError
from rlhfkit.models import is_peft
from rlhfkit.prefix import PrefixBatch, collate_groups, supports_shared_prefix
from rlhfkit.tracking import Run, say

LossName = Literal["dpo", "ipo", "cdpo", "preferred_ft", "unlikelihood"]


@dataclass(frozen=True)
class DPOConfig:
    """rlhfkit dpo: preference optimisation on {"prompt","chosen","rejected"} pairs (or rankings), or online."""

    data: DataConfig = field(default_factory=DataConfig)
    """Preferences or rankings JSONL (offline); in online mode only the length policy and eval_fraction are used."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Initial policy, which is also the reference pi_ref (usually the SFT model's directory)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (lora.r > 0); the reference is then the same weights with the adapter disabled."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, epochs=1))
    """Loop settings (batch_size counts pairs; each step runs 2 * batch_size sequences)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10))
    """Optimizer settings."""
    loss: LossName = "dpo"
    """dpo, ipo, cdpo (DPO with label smoothing), preferred_ft (SFT on chosen only) or unlikelihood."""
    beta: float = 0.1
    """DPO's KL coefficient; also scales the implicit rewards logged for every loss."""
    label_smoothing: float = 0.1
    """cdpo only: assumed probability that a label is flipped, in (0, 0.5)."""
    tau: float = 0.1
    """ipo only: the loss regresses the log-ratio margin to 1 / (2 tau)."""
    alpha: float = 1.0
    """unlikelihood only: weight of the term that lowers p(rejected)."""
    ref_mode: Literal["cached", "per_step"] = "cached"
    """cached: reference log-probs computed once before training (stored as <out>/ref_logps.pt and reused while
    data and reference are unchanged); per_step: a reference forward pass on every batch."""
    shared_prefix: bool = True
    """Run each pair as one row: the prompt (and any response tokens both sides start with) once, then both
    responses, with a 4D attention mask keeping them apart (rlhfkit.prefix; exact). Needs sdpa or eager
    attention; other models fall back to two rows per pair."""
    kl_prompts: int = 16
    """Held-out prompts sampled at evaluation for objective/kl; 0 turns the sampled KL off."""
    kl_samples: int = 2
    """Samples per held-out prompt for objective/kl."""
    max_new_tokens: int = 32
    """Longest sampled response (KL evaluation and online rounds)."""
    online: bool = False
    """Iterated DPO: sample from the policy, label with --judge, train; repeated --rounds times."""
    rounds: int = 2
    """Online rounds."""
    prompts: str = ""
    """Online: prompts JSONL ({"prompt"} per line)."""
    judge: str = "vader"
    """Online labeler: 'vader', 'module:function' (a scorer) or 'rm:PATH' (a reward model)."""
    samples_per_prompt: int = 4
    """Online: responses K sampled per prompt (all C(K,2) pairs are labelled; exact ties are dropped)."""
    temperature: float = 1.0
    """Online: sampling temperature."""
    label_temperature: float = 0.0
    """Online: Bradley-Terry noise of the labeler (0 follows the scores exactly)."""
    out: str = "runs/dpo"
    """Run directory; the model is saved to <out>/model (online: also <out>/round-<i>/model)."""


# --------------------------------------------------------------------------------------------------- data
@dataclass
class Pair:
    """One tokenised preference pair; ref_logps = (log pi_ref(y_w|x), log pi_ref(y_l|x)) once computed."""

    chosen: Encoded
    rejected: Encoded
    prompt: str = ""
    ref_logps: tuple[float, float] | None = None


def detect_kind(source: str) -> str:
    """'rankings' if the first record of a JSONL file has a `ranking` field, else 'preferences'."""
    path = Path(source)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        return "rankings" if "ranking" in json.loads(line) else "preferences"
                    except json.JSONDecodeError:
                        break  # the reader names the bad line
    return "preferences"


def as_pairs(records: list[dict], kind: str) -> list[dict]:
    """Preference records; rankings expand to their C(K, 2) pairs (best first)."""
    return [p for r in records for p in ranking_to_pairs(r)] if kind == "rankings" else records


def encode_pairs(tokenizer: Any, records: list[dict], data: DataConfig) -> tuple[list[Pair], int]:
    """Tokenise each pair's two sides under the length policy; a pair is dropped if either side is.
    Returns (pairs, dropped)."""
    pairs, dropped = [], 0
    for rec in records:
        sides = [encode_pair(tokenizer, rec["prompt"], rec[k], data.max_length, data.max_prompt_length,
                             data.truncation) for k in ("chosen", "rejected")]
        if sides[0] is None or sides[1] is None:
            dropped += 1
            continue
        pairs.append(Pair(sides[0], sides[1], rec["prompt"]))
    return pairs, dropped


def shares_first_token(pair: Pair) -> bool:
    """Do y_w and y_l start with the same token (after the same prompt)? That token gets no DPO gradient."""
    c, r = pair.chosen, pair.rejected
    return c.input_ids[: c.prompt_length + 1] == r.input_ids[: r.prompt_length + 1]


def collate_pairs(pairs: list[Pair], pad_id: int, shared_prefix: bool = False) -> TokenBatch | PrefixBatch:
    """(2B, T) batch: chosen in rows [0, B), rejected in rows [B, 2B); or, shared_prefix, a PrefixBatch of B
    rows (chosen side 0, rejected side 1). extras["ref_logps"] (2B,) chosen first, when cached."""
    if shared_prefix:
        batch = collate_groups([[p.chosen, p.rejected] for p in pairs], pad_id)
    else:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if all(p.ref_logps is not None for p in pairs):
        ref = [p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs]
        batch.extras["ref_logps"] = torch.tensor(ref, dtype=torch.float32)  # (2B,)
    return batch


# -------------------------------------------------------------------------------------------- log-probs
def response_token_logps(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs of a right-padded batch from the first response position on.

    Returns (token_logps, mask), both (N, K-1) with K = T - s + 1, s = the earliest response column: the LM
    head runs only on the last K positions (`logits_to_keep`), so prompt tokens never reach it. A PrefixBatch
    of B groups of G gives (G*B, L) rows in the same order as the unpacked batch (side 0's B rows first).
    """
    if isinstance(batch, PrefixBatch):
        token_logps, mask = prefix.token_logps(model, batch)  # (G, B, L)
        return token_logps.flatten(0, 1), mask.flatten(0, 1)
    first = max(1, int(batch.loss_mask.argmax(-1).min()))  # earliest response column s (token 0 is never scored)
    keep = batch.input_ids.shape[1] - first + 1
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep,
                   use_cache=False).logits  # (N, K, V); no KV cache to build in a full-sequence pass
    ids = batch.input_ids[:, -keep:]  # (N, K): the tokens whose positions produced the kept logits
    return ops.token_logprobs(logits, ids), batch.loss_mask[:, -keep + 1 :]  # (N, K-1), (N, K-1)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Dropout off for the duration (log-probs must be deterministic), the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class Reference:
    """pi_ref: a frozen copy of the initial model, or (frozen=None) the policy itself with its LoRA adapter
    disabled. Without LoRA and without a copy the policy stands in, which is right only before training."""

    policy: Any
    frozen: Any = None

    @contextlib.contextmanager
    def model(self) -> Iterator[Any]:
        """The reference model, in eval mode, under no_grad (adapter disabled when it is the LoRA policy)."""
        policy = getattr(self.policy, "module", self.policy)  # unwrap DDP
        target = self.frozen if self.frozen is not None else policy
        adapter = policy.disable_adapter() if self.frozen is None and is_peft(policy) else contextlib.nullcontext()
        with torch.no_grad(), eval_mode(target), adapter:
            yield target

    def sequence_logps(self, batch: TokenBatch) -> torch.Tensor:
        """(N,) summed reference log-probs of the response tokens of a (N, T) batch."""
        with self.model() as ref:
            token_logps, mask = response_token_logps(ref, batch)
            return ops.masked_sum(token_logps, mask, dim=-1)


# ----------------------------------------------------------------------------------------------- losses
@dataclass
class PairLogps:
    """Policy log-probs of a (2B, T) pair batch split into its chosen and rejected halves."""

    chosen: torch.Tensor  # (B,) log pi(y_w | x)
    rejected: torch.Tensor  # (B,) log pi(y_l | x)
    chosen_tokens: torch.Tensor  # (B, K-1) per-token log-probs of y_w
    rejected_tokens: torch.Tensor  # (B, K-1)
    chosen_mask: torch.Tensor  # (B, K-1)
    rejected_mask: torch.Tensor  # (B, K-1)


# A pair loss maps (policy log-probs, reference (ref_chosen (B,), ref_rejected (B,))) to per-pair losses (B,).
PairLoss = Callable[[PairLogps, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]

PAIR_LOSSES: dict[str, Callable[[DPOConfig], PairLoss]] = {
    "dpo": lambda c: lambda p, ref: losses.dpo_loss(p.chosen, p.rejected, *ref, beta=c.beta)[0],
    "cdpo": lambda c: lambda p, ref: losses.dpo_loss(p.chosen, p.rejected, *ref, beta=c.beta,
                                                     label_smoothing=c.label_smoothing)[0],
    "ipo": lambda c: lambda p, ref: losses.ipo_loss(p.chosen, p.rejected, *ref, tau=c.tau)[0],
    "preferred_ft": lambda c: lambda p, ref: losses.preferred_ft_loss(p.chosen_tokens, p.chosen_mask),
    "unlikelihood": lambda c: lambda p, ref: losses.unlikelihood_loss(
        p.chosen_tokens, p.chosen_mask, p.rejected_tokens, p.rejected_mask, alpha=c.alpha),
}


def check_loss_options(cfg: DPOConfig) -> None:
    if cfg.loss == "cdpo" and not 0 < cfg.label_smoothing < 0.5:
        raise RlhfkitError(f"--label-smoothing must be in (0, 0.5) for cdpo, got {cfg.label_smoothing}")
    if cfg.beta <= 0 or cfg.tau <= 0:
        raise RlhfkitError(f"--beta and --tau must be > 0, got beta={cfg.beta}, tau={cfg.tau}")


def pair_metrics(p: PairLogps, ref: tuple[torch.Tensor, torch.Tensor], beta: float) -> dict[str, float]:
    """Implicit rewards beta * log(pi / pi_ref) of both sides and their accuracy / margin (DPO paper sec. 5)."""
    chosen_rewards = beta * (p.chosen.detach() - ref[0])  # (B,)
    rejected_rewards = beta * (p.rejected.detach() - ref[1])  # (B,)
    return {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margin": float((chosen_rewards - rejected_rewards).mean()),
        "logps/chosen": float(p.chosen.detach().mean()),
        "logps/rejected": float(p.rejected.detach().mean()),
    }


def preference_objective(pair_loss: PairLoss, reference: Reference, beta: float):
    """objective(model, batch) -> (mean pair loss, metrics) for `rlhfkit.loop.fit`; batch is (2B, T) from
    `collate_pairs`. Reference log-probs come from the batch (cached) or from `reference` (per step)."""

    def objective(model: Any, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        token_logps, mask = response_token_logps(model, batch)  # (2B, K-1), (2B, K-1)
        seq = ops.masked_sum(token_logps, mask, dim=-1)  # (2B,)
        ref = batch.extras.get("ref_logps")
        if ref is None:
            ref = reference.sequence_logps(batch)  # (2B,)
        B = seq.shape[0] // 2
        p = PairLogps(seq[:B], seq[B:], token_logps[:B], token_logps[B:], mask[:B], mask[B:])
        ref_pair = (ref[:B], ref[B:])
        return pair_loss(p, ref_pair).mean(), pair_metrics(p, ref_pair, beta)

    return objective


# -------------------------------------------------------------------------------------- reference cache
def cache_key(pairs: list[Pair], reference: Reference) -> str:
    """sha256 of every pair's token ids and masks and of the reference weights: the cache is valid exactly
    while both are unchanged."""
    h = hashlib.sha256()
    for p in pairs:
        for enc in (p.chosen, p.rejected):
            h.update(json.dumps([enc.input_ids, enc.loss_mask]).encode())
    with reference.model() as ref:
        for name, tensor in sorted(ref.state_dict().items()):
            if "lora_" in name:
                continue  # a disabled adapter is not part of pi_ref
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def compute_ref_logps(pairs: list[Pair], reference: Reference, pad_id: int, batch_size: int,
                      device: Any, shared_prefix: bool = False) -> torch.Tensor:
    """(N, 2) reference log-probs (chosen, rejected) of every pair, in batches."""
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        seq = reference.sequence_logps(collate_pairs(chunk, pad_id, shared_prefix).to(device)).cpu()  # (2b,)
        out.append(torch.stack([seq[: len(chunk)], seq[len(chunk) :]], dim=1))  # (b, 2)
    return torch.cat(out) if out else torch.zeros(0, 2)


def attach_ref_logps(pairs: list[Pair], reference: Reference, pad_id: int, batch_size: int, device: Any,
                     cache_path: Path | None, write: bool = True, shared_prefix: bool = False) -> str:
    """Fill every pair's ref_logps from `cache_path` when its key matches, else compute them (and store them
    there when `write`: only the main process writes). Returns "hit" or "miss"."""
    key = cache_key(pairs, reference)
    cached = torch.load(cache_path) if cache_path is not None and cache_path.exists() else None
    if cached is not None and cached.get("key") == key:
        logps, status = cached["logps"], "hit"
    else:
        logps = compute_ref_logps(pairs, reference, pad_id, batch_size, device, shared_prefix)
        status = "miss"
        if cache_path is not None and write:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "logps": logps}, cache_path)
    for pair, row in zip(pairs, logps.tolist()):
        pair.ref_logps = (row[0], row[1])
    return status


# ------------------------------------------------------------------------------------------ sampled KL
def sampled_kl(policy: Any, reference: Reference, prompt_ids: list[list[int]], tokenizer: Any, cfg: DPOConfig,
               seed: int) -> dict[str, float]:
    """objective/kl: mean over samples y ~ pi of sum_t log pi(y_t) - log pi_ref(y_t) (stats.sequence_kl)."""
    from rlhfkit.generation import sample, sequence_logprob_sums
    from rlhfkit.stats import sequence_kl

    rollout = sample(policy, prompt_ids, tokenizer.pad_token_id, tokenizer.eos_token_id, cfg.kl_samples,
                     cfg.max_new_tokens, temperature=1.0, seed=seed, batch_size=64)
    policy_logps = sequence_logprob_sums(policy, rollout)  # (N,); outside reference.model(): adapter enabled
    with reference.model() as ref:
        ref_logps = sequence_logprob_sums(ref, rollout)  # (N,)
    kl = sequence_kl((policy_logps - ref_logps).cpu().numpy())
    return {"objective/kl": kl.mean, "objective/kl_se": kl.se,
            "objective/response_length": float(rollout.lengths.float().mean())}


def kl_prompt_ids(tokenizer: Any, prompts: list[str], n: int, seed: int) -> list[list[int]]:
    """Token ids of up to n distinct held-out prompts (a seeded sample)."""
    from rlhfkit.data import encode_prompt

    distinct = sorted(set(prompts))
    random.Random(seed).shuffle(distinct)
    return [encode_prompt(tokenizer, p) for p in distinct[:n]]


# ----------------------------------------------------------------------------------------------- stages
@dataclass
class Setup:
    """What every round of a DPO run shares: accelerator, policy, tokenizer, reference and the objective."""

    cfg: DPOConfig
    accelerator: Any
    model: Any
    tokenizer: Any
    reference: Reference
    objective: Callable
    shared_prefix: bool  # cfg.shared_prefix, where the model's attention takes a 4D mask


def setup(cfg: DPOConfig) -> Setup:
    """Load the policy (+ LoRA), decide how pi_ref is computed, and build the objective from the loss table."""
    from rlhfkit.loop import make_accelerator
    from rlhfkit.models import apply_lora, load_causal_lm

    check_loss_options(cfg)
    accelerator = make_accelerator(cfg.train)
    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed)
    model = apply_lora(model, cfg.lora).to(accelerator.device)
    needs_copy = cfg.lora.r <= 0 and (cfg.ref_mode == "per_step" or cfg.kl_prompts > 0 or cfg.online)
    frozen = copy.deepcopy(model).requires_grad_(False).eval() if needs_copy else None
    reference = Reference(model, frozen)
    objective = preference_objective(PAIR_LOSSES[cfg.loss](cfg), reference, cfg.beta)
    shared = cfg.shared_prefix and supports_shared_prefix(model)
    if cfg.shared_prefix and not shared:
        say("dpo: this model's attention takes no custom 4D mask; pairs run as two rows (--no-shared-prefix)")
    return Setup(cfg, accelerator, model, tokenizer, reference, objective, shared)


def train_round(s: Setup, train_pairs: list[Pair], eval_pairs: list[Pair], run: Run,
                kl_prompts: list[str]) -> dict[str, Any]:
    """Reference log-probs (cached or per step), then `fit`; returns the round's summary."""
    from rlhfkit.loop import fit

    cfg, pad = s.cfg, s.tokenizer.pad_token_id
    ref_cache, t0 = "per_step", time.time()
    if cfg.ref_mode == "cached":
        ref_cache = attach_ref_logps(train_pairs + eval_pairs, s.reference, pad, cfg.train.batch_size,
                                     s.accelerator.device, run.dir / "ref_logps.pt", s.accelerator.is_main_process,
                                     s.shared_prefix)
    ref_seconds = time.time() - t0
    prompt_ids = kl_prompt_ids(s.tokenizer, kl_prompts, cfg.kl_prompts, cfg.train.seed)
    def evaluate(policy: Any) -> dict[str, float]:
        return sampled_kl(policy, s.reference, prompt_ids, s.tokenizer, cfg, cfg.train.seed)

    result = fit(s.objective, s.model, train_pairs, lambda chunk: collate_pairs(chunk, pad, s.shared_prefix),
                 cfg.train, cfg.optim, run, s.accelerator, eval_examples=eval_pairs or None,
                 evaluate=evaluate if prompt_ids else None)
    pairs_seen = result.step * cfg.train.batch_size * cfg.train.grad_accum * s.accelerator.num_processes
    return {"loss": cfg.loss, "beta": cfg.beta, "tau": cfg.tau, "label_smoothing": cfg.label_smoothing,
            "alpha": cfg.alpha, "step": result.step, "status": result.status, "eval": result.eval_metrics,
            "kl": result.eval_metrics.get("objective/kl"), "train": result.last_metrics,
            "pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "ref_cache": ref_cache,
            "pairs_sharing_first_token": sum(shares_first_token(p) for p in train_pairs),
            "pairs_per_s": pairs_seen / max(result.seconds, 1e-9), "seconds": result.seconds,
            "ref_seconds": ref_seconds, "final_snapshot": str(result.snapshot) if result.snapshot else None}


def finish(s: Setup, run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    from rlhfkit.loop import save_final_model

    summary["model"] = str(run.dir / "model")
    if s.accelerator.is_main_process:
        snapshot = summary.get("final_snapshot")
        save_final_model(s.accelerator.unwrap_model(s.model), s.tokenizer, run.dir,
                         Path(snapshot) if snapshot else None, s.cfg.lora.merge)
        run.write_json("summary.json", summary)
    run.close()
    return summary


def load_pair_records(data: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) preference records for offline DPO, rankings expanded to their pairs: the `eval` file
    (with a warning when its prompts also occur in train), else a seeded `eval_fraction` of train's prompts.

    The split is by prompt (`split_train_eval`) and comes before the expansion, so every pair and ranking of
    a held-out prompt is held out and none of its completions is trained on.
    """
    from rlhfkit.data import read_records, warn_shared_prompts

    if not data.train:
        raise RlhfkitError("no training data: pass --data.train FILE (preferences or rankings JSONL)")
    kind = detect_kind(data.train)
    records = read_records(data.train, kind)[: data.max_records]
    if data.eval:
        eval_kind = detect_kind(data.eval)
        held = read_records(data.eval, eval_kind)
        warn_shared_prompts(records, held, data.train, data.eval)
        return as_pairs(records, kind), as_pairs(held, eval_kind)
    train, held = split_train_eval(records, data.eval_fraction, seed)
    return as_pairs(train, kind), as_pairs(held, kind)


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Offline DPO (or a baseline) on a preferences / rankings file; returns the summary."""
    from rlhfkit.data import split_summary

    train_recs, eval_recs = load_pair_records(cfg.data, cfg.train.seed)  # bad data fails before any model loads
    s = setup(cfg)
    run = Run(cfg.out, cfg, is_main=s.accelerator.is_main_process)
    train_pairs, dropped = encode_pairs(s.tokenizer, train_recs, cfg.data)
    eval_pairs, _ = encode_pairs(s.tokenizer, eval_recs, cfg.data)
    if not train_pairs:
        raise RlhfkitError(f"{cfg.data.train}: no pair survived the length policy ({dropped} dropped)")
    split = split_summary(train_recs, eval_recs)
    say(f"dpo ({cfg.loss}): {len(train_pairs)} training pairs of {split['train_prompts']} prompts ({dropped} "
        f"dropped), {len(eval_pairs)} held out of {split['eval_prompts']} prompts")
    summary = train_round(s, train_pairs, eval_pairs, run, [p.prompt for p in eval_pairs])
    summary["dropped_pairs"] = dropped
    summary["split"] = split
    return finish(s, run, summary)


def sample_candidates(s: Setup, prompts: list[str], round_index: int) -> list[dict]:
    """K responses per prompt from the current policy -> candidates records (policy = round-<i>)."""
    from rlhfkit.data import encode_prompt
    from rlhfkit.generation import decode_responses, sample

    cfg = s.cfg
    rollout = sample(s.model, [encode_prompt(s.tokenizer, p) for p in prompts], s.tokenizer.pad_token_id,
                     s.tokenizer.eos_token_id, cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature,
                     seed=cfg.train.seed * 1000 + round_index)
    texts = decode_responses(s.tokenizer, rollout)
    K = cfg.samples_per_prompt
    return [{"prompt": p, "responses": texts[i * K : (i + 1) * K], "policy": f"round-{round_index}"}
            for i, p in enumerate(prompts)]


def label_round(s: Setup, candidates: list[dict], round_index: int, scorer: Any) -> tuple[list[dict], dict]:
    """Preference records for the round's candidates (the labeler drops and counts empty responses)."""
    from rlhfkit.labeling.auto import label_candidates
    from rlhfkit.labeling.gold import scorer_source

    records, counts = label_candidates(candidates, scorer, "pairs", s.cfg.label_temperature,
                                       s.cfg.train.seed + round_index, s.cfg.judge, scorer_source(s.cfg.judge))
    return records, dict(counts)


def online_round_records(s: Setup, train_prompts: list[str], held_prompts: list[str], round_index: int,
                         scorer: Any, round_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """Sample and label one online round; returns (training pairs, held-out pairs, label counts).

    Training pairs come only from the train prompts and held-out pairs only from the held-out prompts, so no
    held-out prompt is trained on in any round. Writes round-<i>/{candidates,preferences}.jsonl (training)
    and round-<i>/eval_{candidates,preferences}.jsonl (held out).
    """
    from rlhfkit.data import write_jsonl

    held = set(held_prompts)
    candidates = sample_candidates(s, train_prompts + held_prompts, round_index)  # one sampling pass for both
    records, counts = label_round(s, candidates, round_index, scorer)
    train_recs = [r for r in records if r["prompt"] not in held]
    eval_recs = [r for r in records if r["prompt"] in held]
    if s.accelerator.is_main_process:
        write_jsonl(round_dir / "candidates.jsonl", [c for c in candidates if c["prompt"] not in held])
        write_jsonl(round_dir / "preferences.jsonl", train_recs)
        write_jsonl(round_dir / "eval_candidates.jsonl", [c for c in candidates if c["prompt"] in held])
        write_jsonl(round_dir / "eval_preferences.jsonl", eval_recs)
    return train_recs, eval_recs, counts


def run_online(cfg: DPOConfig) -> dict[str, Any]:
    """Iterated DPO: each round samples from the current policy, labels the pairs with the judge and trains on
    them; pi_ref stays the initial model. Round i keeps round-<i>/{candidates,preferences}.jsonl and model.

    The prompts are split by prompt once, before any round (<out>/heldout_prompts.jsonl): held-out prompts are
    sampled and labelled every round for that round's eval pairs and the sampled KL, and never trained on."""
    from rlhfkit.data import read_records, split_summary, write_jsonl
    from rlhfkit.labeling.gold import make_scorer

    if not cfg.prompts:
        raise RlhfkitError("--online needs --prompts FILE (prompts JSONL)")
    scorer = make_scorer(cfg.judge)  # fail before any sampling if the judge cannot be built
    prompts = [r["prompt"] for r in read_records(cfg.prompts, "prompts")][: cfg.data.max_records]
    s = setup(cfg)
    run = Run(cfg.out, cfg, is_main=s.accelerator.is_main_process)
    train_prompts, held_prompts = split_train_eval(prompts, cfg.data.eval_fraction, cfg.train.seed)
    if s.accelerator.is_main_process:
        write_jsonl(run.dir / "heldout_prompts.jsonl", [{"prompt": p} for p in held_prompts])
    rounds = []
    for i in range(1, cfg.rounds + 1):
        round_dir = run.dir / f"round-{i}"
        train_recs, eval_recs, counts = online_round_records(s, train_prompts, held_prompts, i, scorer, round_dir)
        train_pairs, _ = encode_pairs(s.tokenizer, train_recs, cfg.data)
        eval_pairs, _ = encode_pairs(s.tokenizer, eval_recs, cfg.data)
        if not train_pairs:
            raise RlhfkitError(f"round {i}: the judge left no usable pair ({counts}); sample more or longer")
        say(f"dpo online round {i}/{cfg.rounds}: {len(train_pairs)} pairs from {len(train_prompts)} prompts, "
            f"{len(eval_pairs)} held out from {len(held_prompts)} prompts {counts}")
        round_run = Run(round_dir, cfg, s.accelerator.is_main_process)
        summary = train_round(s, train_pairs, eval_pairs, round_run, held_prompts or train_prompts)
        summary["split"] = split_summary(train_recs, eval_recs)
        rounds.append(finish(s, round_run, {**summary, "labeling": counts}))
        run.log(i, {f"round/{k}": v for k, v in rounds[-1]["eval"].items()})
    return finish(s, run, {**rounds[-1], "rounds": rounds, "online": True, "judge": cfg.judge})


def main(argv: list[str]) -> int:
    cfg = config_lib.parse(DPOConfig, argv, prog="rlhfkit dpo")
    summary = run_online(cfg) if cfg.online else run_dpo(cfg)
    ev = summary.get("eval", {})
    say(f"dpo ({cfg.loss}): held-out accuracy {ev.get('eval/rewards/accuracy')}, margin "
        f"{ev.get('eval/rewards/margin')}, KL {summary.get('kl')}; model saved to {summary['model']}")
    return 0


# ------------------------------------------------------------------------------------ beta for a KL budget
@dataclass(frozen=True)
class BetaForKLArgs:
    """rlhfkit eval beta-for-kl: fit log(KL) against log(beta) over DPO runs and predict beta for a KL."""

    target_kl: float
    """The KL budget in nats (sequence-level KL to the reference)."""
    runs: tuple[str, ...]
    """DPO run directories (each with a summary.json holding beta and the final sampled KL)."""


def read_beta_kl(run_dir: str) -> tuple[float, float]:
    """(beta, final KL) from a DPO run's summary.json."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise RlhfkitError(f"{path} not found: is {run_dir} a finished DPO run?")
    summary = json.loads(path.read_text())
    if summary.get("beta") is None or summary.get("kl") is None:
        raise RlhfkitError(f"{path} has no beta or kl (was the run's sampled KL turned off with --kl-prompts 0?)")
    return float(summary["beta"]), float(summary["kl"])


def beta_for_kl_main(argv: list[str]) -> int:
    """Print the fit (slope, intercept, r2, n) and the predicted beta as one JSON object on stdout."""
    import tyro

    from rlhfkit.stats import fit_beta_kl, predict_beta

    args = tyro.cli(BetaForKLArgs, args=argv, prog="rlhfkit eval beta-for-kl")
    points = [read_beta_kl(d) for d in args.runs]
    try:
        fit = fit_beta_kl([b for b, _ in points], [k for _, k in points])
        beta = predict_beta(fit, args.target_kl)
    except ValueError as err:
        raise RlhfkitError(str(err)) from None
    extrapolated = warn_if_extrapolated(args.target_kl, [k for _, k in points])
    print(json.dumps({"fit": fit.to_dict(), "target_kl": args.target_kl, "beta": beta, "extrapolated": extrapolated,
                      "runs": [{"run": d, "beta": b, "kl": k} for d, (b, k) in zip(args.runs, points)]}))
    return 0


def warn_if_extrapolated(target_kl: float, kls: list[float]) -> bool:
    """Is `target_kl` outside [min, max] of the fitted runs' KLs? Then say so (one line on stderr): the line is
    fitted on log-log axes, and far from its points a small error in the slope moves beta a lot."""
    low, high = min(kls), max(kls)
    if low <= target_kl <= high:
        return False
    say(f"warning: target KL {target_kl:g} is outside the fitted runs' KL range [{low:g}, {high:g}]: "
        "the beta is extrapolated")
    return True
