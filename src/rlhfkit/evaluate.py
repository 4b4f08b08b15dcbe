"""Evaluate policies the way the papers do: gold reward against KL to the reference, and win rates.

For a policy pi and its reference pi_ref on held-out prompts:
  reward  mean gold score of samples y ~ pi(.|x) (with a normal 95% CI)
  KL      KL(pi || pi_ref) = E_{y ~ pi}[ sum_t log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t) ], estimated by the
          mean over samples, where pi and pi_ref are the distributions actually sampled from: both are put
          through `rlhfkit.generation.constrain_logits` (the same temperature, EOS forbidden at response steps
          < min_new_tokens, renormalised). A constraint both models share then costs no KL.
  length  mean completion length in tokens (reported next to reward: longer texts can score higher)
Standard errors are clustered by prompt: the K samples of one prompt are averaged first (`prompt_rewards`,
`prompt_kls`, `prompt_lengths`), then the interval is taken over prompts, since samples of one prompt are not
independent. `rlhfkit eval reward-kl` prints each mean with its standard error and 95% interval
(`PolicyEval.to_dict`); `rlhfkit eval win-rate` the counts (ties apart), the rate (ties count half) and its 95%
Wilson interval (`win_rate_dict`), with both sides' mean lengths; under a language-model judge it also counts the
order-inconsistent verdicts (ties) and the unparseable ones (left out of n) (`verdict_win_rate`). top_p < 1 is refused for the KL (a sampled token outside the reference's nucleus has reference
probability 0: the KL is infinite), and so is temperature 0 (greedy decoding has no distribution to compare);
win rates sample with any top_p.
Best-of-N is not a network, so its KL is the analytic KL(best-of-N || pi) = log N - (N-1)/N (Stiennon et al.
2020, Appendix G), an upper bound that is tight when rewards have no ties.

Statistics (confidence intervals, Wilson intervals, fits) live in rlhfkit.stats; plots in rlhfkit.plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit import stats
from rlhfkit.data import check_output, encode_prompt, read_located, write_text
from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import Rollout, decode_responses, sample
from rlhfkit.judges.judge import JudgeOptions, PairVerdict
from rlhfkit.labeling.gold import checked_scores
from rlhfkit.logprobs import sequence_logprob_sums
from rlhfkit.sampling import SamplingConfig, check_sampling
from rlhfkit.tracking import say

if TYPE_CHECKING:
    from rlhfkit.protocols import Scorer
# Rows per teacher-forced reference forward: 64 measured fastest on 2 CPU cores (of 32 to 400 rows), and it bounds
# the (rows, A + 1, V) fp32 logits whatever the generation batch size.
SCORING_BATCH = 64


@dataclass
class PolicyEval:
    """reward and kl: means with standard errors clustered by prompt (n = number of prompts); length: mean
    tokens per completion. prompts / completions / scores: one entry per sample (K consecutive per prompt).
    prompt_rewards / prompt_kls / prompt_lengths: one entry per prompt, in prompt order, the mean over that
    prompt's K samples (what the intervals are computed from)."""

    reward: stats.Estimate
    kl: stats.Estimate
    length: float
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    prompt_rewards: list[float] = field(default_factory=list)
    prompt_kls: list[float] = field(default_factory=list)
    prompt_lengths: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Means and standard errors (what a checkpoint's entry in an experiment's evaluation holds)."""
        return {"reward": self.reward.mean, "reward_se": self.reward.se, "kl": self.kl.mean, "kl_se": self.kl.se,
                "length": self.length, "n": self.reward.n}

    def to_dict(self) -> dict[str, Any]:
        """What `rlhfkit eval reward-kl` prints: `summary()` with the 95% interval of reward and of KL as
        `reward_ci95` / `kl_ci95` = [low, high] (normal approximation over the n prompts)."""
        return {"reward": self.reward.mean, "reward_se": self.reward.se,
                "reward_ci95": [self.reward.low, self.reward.high], "kl": self.kl.mean, "kl_se": self.kl.se,
                "kl_ci95": [self.kl.low, self.kl.high], "length": self.length, "n": self.reward.n}

    def describe(self) -> str:
        """One line for a person: both means with their 95% intervals."""
        return (f"reward {_interval(self.reward.mean, self.reward.low, self.reward.high)}, KL "
                f"{_interval(self.kl.mean, self.kl.low, self.kl.high)} nats, mean length {self.length:.1f} tokens "
                f"(95% intervals over {self.reward.n} prompts)")


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def win_rate_dict(wr: stats.WinRate) -> dict[str, Any]:
    """What `rlhfkit eval win-rate` prints: `WinRate.to_dict()` (its low / high are the 95% Wilson interval)
    with that interval also as `rate_ci95` = [low, high], named like reward-kl's."""
    return {**wr.to_dict(), "rate_ci95": [wr.low, wr.high]}


def describe_win_rate(wr: stats.WinRate) -> str:
    """One line for a person: the counts, ties apart, and the rate with its 95% Wilson interval."""
    return (f"A beats B on {wr.wins} of {wr.n} prompts, loses {wr.losses}, ties {wr.ties}; win rate "
            f"{_interval(wr.rate, wr.low, wr.high)} (ties count half; 95% Wilson interval)")


def prompt_means(values: Any, k: int) -> list[float]:
    """Means over each prompt's k consecutive samples: (N,) -> (N / k,) as floats, in prompt order."""
    x = torch.as_tensor(values, dtype=torch.float64)  # (N,)
    return x.view(-1, k).mean(-1).tolist()  # (N / k,)


def kl_logratios(policy: Any, reference: Any, rollout: Rollout, cfg: SamplingConfig, eos_id: int) -> torch.Tensor:
    """Per-sample log pi(y|x) - log pi_ref(y|x) (N,), both under the sampled (constrained) distribution.

    The policy's side is the sampler's own log-probs (already constrained), saving a policy forward: in fp32 they
    agree with a teacher-forced forward to 2e-6 per token and 5e-5 per 24-token sequence (measured on the demo's
    tiny model). Half-precision models recompute it teacher-forced like the reference, so that both sides carry
    the same rounding. `policy is reference` gives exactly 0.
    """
    constraint = cfg.constraint(eos_id)
    if next(policy.parameters()).dtype == torch.float32:
        policy_logps = rollout.logprobs.sum(-1).double()  # (N,) padding is 0
    else:
        policy_logps = sequence_logprob_sums(policy, rollout, SCORING_BATCH, **constraint).cpu().double()
    if reference is policy:
        return policy_logps - policy_logps
    ref_logps = sequence_logprob_sums(reference, rollout, SCORING_BATCH, **constraint).cpu().double()  # (N,)
    return policy_logps - ref_logps


def evaluate_policy(policy: Any, reference: Any, tokenizer: Any, prompts: list[str], scorer: Scorer,
                    cfg: SamplingConfig = SamplingConfig(), seed: int = 0, *, spec: str = "scorer",
                    where: list[tuple[str, int]] | None = None) -> PolicyEval:
    """Sample from `policy`, score with `scorer` (gold function or reward model), estimate KL to `reference`.

    Standard errors are clustered by prompt (see the module docstring). A non-finite score is refused naming the
    scorer (`spec`) and, given `where` (each prompt's file and line), the prompt's record.
    """
    check_sampling(cfg.temperature, cfg.top_p, needs_logprobs=True)
    rollout = sample(policy, [encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id,
                     tokenizer.eos_token_id, cfg, seed=seed, where=where)
    texts = decode_responses(tokenizer, rollout)
    k = cfg.samples_per_prompt
    rows = [p for p in prompts for _ in range(k)]
    scores = checked_scores(scorer, rows, texts, spec, [w for w in where for _ in range(k)] if where else None)
    logratios = kl_logratios(policy, reference, rollout, cfg, tokenizer.eos_token_id)  # (N,)
    rewards, kls = prompt_means(scores, k), prompt_means(logratios, k)  # (prompts,) each
    lengths = prompt_means(rollout.lengths, k)
    return PolicyEval(stats.mean_ci(rewards), stats.sequence_kl(kls), float(rollout.lengths.float().mean()), rows,
                      texts, scores, rewards, kls, lengths)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base) = log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def verdict_win_rate(verdicts: list[PairVerdict]) -> tuple[stats.WinRate, dict[str, Any]]:
    """Win rate of a (first) over b from pairwise verdicts of any judge (`rlhfkit.labeling.auto.Labeler.compare`:
    a scorer's higher score wins), ties counting half, and what it leaves out or should be read with: unparseable
    verdicts (excluded from n) and order-inconsistent ones (counted as ties)."""
    winners = [v.winner for v in verdicts]
    judged = [w for w in winners if w is not None]
    if not judged:
        raise RlhfkitError(f"the judge gave no usable verdict on any of {len(verdicts)} pairs (all unparseable)")
    wr = stats.win_rate_counts(judged.count("a"), judged.count("b"), judged.count("tie"))
    inconsistent = sum(v.consistent is False for v in verdicts)
    probs = [v.prob_a for v in verdicts if v.prob_a is not None]
    extra = {"unparseable": len(winners) - len(judged), "order_inconsistent": inconsistent,
             "order_inconsistent_share": inconsistent / len(verdicts),
             "mean_prob_a": sum(probs) / len(probs) if probs else None}
    return wr, extra


# ------------------------------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class RewardKLArgs(JudgeOptions):
    """rlhfkit eval reward-kl: mean gold reward and KL(pi || pi_ref) of a policy on held-out prompts."""

    policy: str
    """Policy model directory."""
    reference: str
    """Reference model directory (usually the SFT model)."""
    prompts: str
    """Held-out prompts JSONL ({"prompt"})."""
    judge: str = "vader"
    """Gold scorer: vader, module:function, rm:PATH, or a language model's 1-7 score (hf:MODEL, openai:MODEL)."""
    num_prompts: int = 256
    """Evaluate on the first N prompts."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings."""
    seed: int = 0
    """Sampling seed."""
    out: str | None = None
    """Write the result as JSON here."""


@dataclass(frozen=True)
class WinRateArgs(JudgeOptions):
    """rlhfkit eval win-rate: how often policy A's completion beats policy B's on the same prompt."""

    a: str
    """Model directory of policy A."""
    b: str
    """Model directory of policy B."""
    prompts: str
    """Held-out prompts JSONL ({"prompt"})."""
    judge: str = "vader"
    """Judge: vader, module:function or rm:PATH (the higher score wins), or a language model asked which completion
    is better, in both orders (hf:MODEL; 'hf:' = SmolLM2-135M-Instruct offline; openai:MODEL with --judge-url)."""
    num_prompts: int = 256
    """Evaluate on the first N prompts."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings."""
    seed: int = 0
    """Sampling seed."""


def _load(path: str) -> tuple[Any, Any]:
    from rlhfkit.config import ModelConfig
    from rlhfkit.models import load_causal_lm

    return load_causal_lm(ModelConfig(name=path))


def reward_kl_main(argv: list[str]) -> int:
    import json

    from rlhfkit.config import parse
    from rlhfkit.labeling.gold import make_scorer

    args = parse(RewardKLArgs, argv, prog="rlhfkit eval reward-kl")
    check_sampling(args.sampling.temperature, args.sampling.top_p, needs_logprobs=True)  # before loading models
    if args.out:
        check_output(args.out)
    located = read_located(args.prompts, "prompts")[: args.num_prompts]
    scorer = make_scorer(args.judge, args)
    policy, tokenizer = _load(args.policy)
    reference, _ = _load(args.reference)
    evaluation = evaluate_policy(policy, reference, tokenizer, [r["prompt"] for r, _ in located], scorer,
                                 args.sampling, args.seed, spec=args.judge, where=[w for _, w in located])
    result = evaluation.to_dict()
    print(json.dumps(result, indent=2))
    if args.out:
        write_text(args.out, json.dumps(result, indent=2))
    say(f"reward-kl: {evaluation.describe()}")
    return 0


def win_rate_main(argv: list[str]) -> int:
    import json

    from rlhfkit.config import parse
    from rlhfkit.labeling.auto import make_labeler

    args = parse(WinRateArgs, argv, prog="rlhfkit eval win-rate")
    check_sampling(args.sampling.temperature, args.sampling.top_p)  # before loading models; any top_p is fine here
    located = read_located(args.prompts, "prompts")[: args.num_prompts]
    prompts, where = [r["prompt"] for r, _ in located], [w for _, w in located]
    labeler = make_labeler(args.judge, args, "pairs")
    completions, lengths = [], []
    for path in (args.a, args.b):
        model, tokenizer = _load(path)
        rollout = sample(model, [encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id,
                         tokenizer.eos_token_id, args.sampling, num_samples=1, seed=args.seed,
                         where=where)  # one per prompt
        completions.append(decode_responses(tokenizer, rollout))
        lengths.append(float(rollout.lengths.float().mean()))
    verdicts = labeler.compare(prompts, completions[0], completions[1], where)
    wr, extra = verdict_win_rate(verdicts)
    result = {**win_rate_dict(wr), **extra, "mean_length_a": lengths[0], "mean_length_b": lengths[1],
              "judge": verdicts[0].judge, "template": verdicts[0].template or None}
    print(json.dumps(result, indent=2))
    say(f"win-rate: {describe_win_rate(wr)}; mean length {lengths[0]:.1f} (A) vs {lengths[1]:.1f} (B) tokens"
        + (f"; {extra['unparseable']} unparseable left out" if extra["unparseable"] else "")
        + (f"; {extra['order_inconsistent']} order-inconsistent (ties)" if extra["order_inconsistent"] else ""))
    return 0
