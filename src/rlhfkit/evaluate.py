"""Evaluate policies the way the papers do: gold reward against KL to the reference, and win rates.

For a policy pi and its reference pi_ref on held-out prompts:
  reward  mean gold score of samples y ~ pi(.|x) (with a normal 95% CI)
  KL      KL(pi || pi_ref) = E_{y ~ pi}[ sum_t log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t) ], estimated by the
          mean over samples (temperature 1, the policy's own distribution) with its standard error
  length  mean completion length in tokens (reported next to reward: longer texts can score higher)
Best-of-N is not a network, so its KL is the analytic KL(best-of-N || pi) = log N - (N-1)/N (Stiennon et al.
2020, Appendix G), an upper bound that is tight when rewards have no ties.

Statistics (confidence intervals, Wilson intervals, fits) live in rlhfkit.stats; plots in rlhfkit.plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


from rlhfkit import stats
from rlhfkit.data import encode_prompt, read_records
from rlhfkit.generation import decode_responses, sample, sequence_logprob_sums

Scorer = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class SamplingConfig:
    """How evaluation samples completions."""

    max_new_tokens: int = 24
    """Longest completion in tokens."""
    min_new_tokens: int = 0
    """Forbid EOS before this many tokens (= max_new_tokens: fixed-length completions)."""
    temperature: float = 1.0
    """Sampling temperature; the KL estimate is exact in expectation only at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off; anything lower biases the KL estimate)."""
    samples_per_prompt: int = 1
    """Completions drawn per prompt."""
    batch_size: int = 64
    """Prompts per generation batch."""


@dataclass
class PolicyEval:
    reward: stats.Estimate
    kl: stats.Estimate
    length: float
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"reward": self.reward.mean, "reward_se": self.reward.se, "kl": self.kl.mean, "kl_se": self.kl.se,
                "length": self.length, "n": self.reward.n}


def evaluate_policy(policy: Any, reference: Any, tokenizer: Any, prompts: list[str], scorer: Scorer,
                    cfg: SamplingConfig = SamplingConfig(), seed: int = 0) -> PolicyEval:
    """Sample from `policy`, score with `scorer` (gold function or reward model), estimate KL to `reference`."""
    rollout = sample(policy, [encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id,
                     tokenizer.eos_token_id, num_samples=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, top_p=cfg.top_p, min_new_tokens=cfg.min_new_tokens, seed=seed,
                     batch_size=cfg.batch_size)
    texts = decode_responses(tokenizer, rollout)
    rows = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    scores = [float(s) for s in scorer(rows, texts)]
    logratios = sequence_logprob_sums(policy, rollout) - sequence_logprob_sums(reference, rollout)  # (N,)
    return PolicyEval(stats.mean_ci(scores), stats.sequence_kl(logratios.tolist()),
                      float(rollout.lengths.float().mean()), rows, texts, scores)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base) = log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def judge_win_rate(prompts: list[str], completions_a: list[str], completions_b: list[str],
                   scorer: Scorer) -> stats.WinRate:
    """Win rate of A over B on the same prompts under a judge that scores each completion; ties count half."""
    scores_a = scorer(prompts, completions_a)
    scores_b = scorer(prompts, completions_b)
    return stats.win_rate(scores_a, scores_b)


# ------------------------------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class RewardKLArgs:
    """rlhfkit eval reward-kl: mean gold reward and KL(pi || pi_ref) of a policy on held-out prompts."""

    policy: str
    """Policy model directory."""
    reference: str
    """Reference model directory (usually the SFT model)."""
    prompts: str
    """Held-out prompts JSONL ({"prompt"})."""
    judge: str = "vader"
    """Gold scorer: vader, module:function, or rm:PATH."""
    num_prompts: int = 256
    """Evaluate on the first N prompts."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings."""
    seed: int = 0
    """Sampling seed."""
    out: str | None = None
    """Write the result as JSON here."""


@dataclass(frozen=True)
class WinRateArgs:
    """rlhfkit eval win-rate: how often policy A's completion beats policy B's on the same prompt."""

    a: str
    """Model directory of policy A."""
    b: str
    """Model directory of policy B."""
    prompts: str
    """Held-out prompts JSONL ({"prompt"})."""
    judge: str = "vader"
    """Judge: vader, module:function, or rm:PATH."""
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
    prompts = [r["prompt"] for r in read_records(args.prompts, "prompts")][: args.num_prompts]
    scorer = make_scorer(args.judge)
    policy, tokenizer = _load(args.policy)
    reference, _ = _load(args.reference)
    result = evaluate_policy(policy, reference, tokenizer, prompts, scorer, args.sampling, args.seed).summary()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def win_rate_main(argv: list[str]) -> int:
    import json

    from rlhfkit.config import parse
    from rlhfkit.labeling.gold import make_scorer

    args = parse(WinRateArgs, argv, prog="rlhfkit eval win-rate")
    prompts = [r["prompt"] for r in read_records(args.prompts, "prompts")][: args.num_prompts]
    scorer = make_scorer(args.judge)
    completions = []
    for path in (args.a, args.b):
        model, tokenizer = _load(path)
        rollout = sample(model, [encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id,
                         tokenizer.eos_token_id, max_new_tokens=args.sampling.max_new_tokens,
                         min_new_tokens=args.sampling.min_new_tokens, temperature=args.sampling.temperature,
                         top_p=args.sampling.top_p, seed=args.seed, batch_size=args.sampling.batch_size)
        completions.append(decode_responses(tokenizer, rollout))
    print(json.dumps(judge_win_rate(prompts, completions[0], completions[1], scorer).to_dict(), indent=2))
    return 0


def beta_for_kl_main(argv: list[str]) -> int:
    """`rlhfkit eval beta-for-kl`: implemented next to DPO, which writes the runs it reads."""
    from rlhfkit.dpo import beta_for_kl_main as impl

    return impl(argv)
