"""Best-of-N sampling, and `rlhfkit sample`: draw N completions per prompt, keep the one a scorer likes best.

A strong, training-free baseline for RLHF (Stiennon et al. 2020; Nakano et al. 2021): its KL to the policy is
at most log N - (N - 1) / N nats, so it belongs on every reward-vs-KL frontier next to PPO and DPO.

    rlhfkit sample --model runs/sentiment-tiny/sft/model --prompts prompts.jsonl --num-samples 4 --out cands.jsonl
    rlhfkit sample ... --best-of 8 --reward rm:runs/sentiment-tiny/rm/model
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhfkit.data import check_output, encode_prompt, read_located, write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import decode_responses, sample
from rlhfkit.judges.judge import JudgeOptions
from rlhfkit.sampling import SamplingConfig, check_sampling
from rlhfkit.tracking import say

if TYPE_CHECKING:
    from rlhfkit.protocols import Scorer


@dataclass
class BestOfN:
    """The chosen completion of one prompt, and every candidate it was chosen from."""

    prompt: str
    response: str
    score: float
    responses: list[str]
    scores: list[float]


def best_of_n(model: Any, tokenizer: Any, prompts: list[str], scorer: Scorer, n: int,
              sampling: SamplingConfig | None = None, *, seed: int = 0, max_prompt_length: int = 64,
              spec: str = "scorer", where: list[tuple[str, int]] | None = None, **fields: Any) -> list[BestOfN]:
    """For each prompt, sample n completions (`rlhfkit.generation.sample` with `sampling` and any SamplingConfig
    `fields`; same seed -> same candidates), score them all with `scorer(prompts, responses)` and keep the
    highest (the first one on ties). where: each prompt's (file, line), named when a prompt leaves no room in
    the model's context or the scorer returns NaN for one of its samples."""
    from rlhfkit.labeling.gold import checked_scores

    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1, got {n}")
    ids = [encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    rollout = sample(model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, sampling, num_samples=n, seed=seed,
                     where=where, **fields)
    texts = decode_responses(tokenizer, rollout)  # n consecutive rows per prompt
    scores = checked_scores(scorer, [p for p in prompts for _ in range(n)], texts, spec,
                            [w for w in where for _ in range(n)] if where is not None else None)
    out = []
    for i, prompt in enumerate(prompts):
        cands, sc = texts[i * n: (i + 1) * n], scores[i * n: (i + 1) * n]
        best = max(range(n), key=lambda j: sc[j])  # max() keeps the first of equal scores
        out.append(BestOfN(prompt, cands[best], sc[best], cands, sc))
    return out


# ---------------------------------------------------------------------------------------------- rlhfkit sample
@dataclass(frozen=True)
class SampleConfig(JudgeOptions):
    """rlhfkit sample: K completions per prompt -> a candidates JSONL ({"prompt", "responses", "policy"})."""

    model: str = "tiny"
    """Policy: a model directory, a Hugging Face id, `smollm2` or `tiny` (random weights)."""
    prompts: str = ""
    """Prompts JSONL ({"prompt"})."""
    out: str = "candidates.jsonl"
    """Candidates JSONL to write."""
    num_samples: int = 4
    """Responses written per prompt."""
    max_new_tokens: int = 32
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: off)."""
    min_new_tokens: int = 1
    """Forbid EOS before this many tokens (candidates files hold non-empty responses)."""
    seed: int = 0
    """Sampling seed (same seed and batch size -> same responses)."""
    best_of: int = 1
    """Each written response is the best of this many samples under --reward (1: plain sampling)."""
    reward: str | None = None
    """Scorer for --best-of (and only used with it): `rm:PATH`, `vader`, `module:function`, or a language model's 1-7
    score (`hf:MODEL`, `openai:MODEL`; ties broken by the score's expectation under its log-probs)."""
    batch_size: int = 64
    """Sequences per generation forward pass."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; longer prompts keep their end."""

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                              temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size)


def check_sample_config(cfg: SampleConfig) -> None:
    """Refuse, with one line (RlhfkitError), options that cannot work or would do nothing in this combination;
    cheap and read-only, so `sample_main` calls it before any model or scorer is loaded."""
    if not cfg.prompts:
        raise RlhfkitError("--prompts is required (a JSONL file of {\"prompt\": ...} records)")
    check_sampling(cfg.temperature, cfg.top_p)
    if cfg.num_samples < 1:
        raise RlhfkitError(f"--num-samples must be >= 1, got {cfg.num_samples}")
    if cfg.best_of < 1:
        raise RlhfkitError(f"--best-of must be >= 1 (1: plain sampling), got {cfg.best_of}")
    if cfg.best_of > 1 and not cfg.reward:
        raise RlhfkitError("--best-of needs --reward (rm:PATH, vader, module:function, hf:MODEL or openai:MODEL) to "
                           "pick the best")
    if cfg.reward and cfg.best_of == 1:
        raise RlhfkitError(f"--reward {cfg.reward} only picks among --best-of N samples, and --best-of is 1: pass "
                           "--best-of N (N >= 2) to keep the best of N, or drop --reward for plain samples")
    if cfg.temperature == 0 and cfg.best_of > 1:
        raise RlhfkitError(f"--temperature 0 (greedy) draws the same completion every time, so --best-of "
                           f"{cfg.best_of} would pick among copies; use a temperature > 0")
    if cfg.temperature == 0 and cfg.num_samples > 1:
        raise RlhfkitError(f"--temperature 0 (greedy) draws the same completion every time, so --num-samples "
                           f"{cfg.num_samples} would write copies; use a temperature > 0, or --num-samples 1")
    if cfg.min_new_tokens > cfg.max_new_tokens:
        raise RlhfkitError(f"--min-new-tokens {cfg.min_new_tokens} exceeds --max-new-tokens {cfg.max_new_tokens}: "
                           "no response can be that long")


def sample_main(argv: list[str]) -> int:
    from rlhfkit import config as config_lib
    from rlhfkit.config import ModelConfig
    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.models import load_causal_lm

    cfg = config_lib.parse(SampleConfig, argv, prog="rlhfkit sample")
    check_sample_config(cfg)  # before loading the model or the scorer
    check_output(cfg.out)
    located = read_located(cfg.prompts, "prompts")
    prompts = [r["prompt"] for r, _ in located]
    scorer = make_scorer(cfg.reward, cfg) if cfg.best_of > 1 else (lambda p, r: [0.0] * len(r))
    model, tokenizer = load_causal_lm(ModelConfig(name=cfg.model), seed=cfg.seed)
    # K written responses per prompt = K rows of the prompt, each the best of `best_of` samples
    rows = [p for p in prompts for _ in range(cfg.num_samples)]
    picked = best_of_n(model, tokenizer, rows, scorer, cfg.best_of, cfg.sampling, seed=cfg.seed,
                       max_prompt_length=cfg.max_prompt_length, spec=cfg.reward or "none",
                       where=[where for _, where in located for _ in range(cfg.num_samples)])
    policy = cfg.model if cfg.best_of == 1 else f"{cfg.model} best-of-{cfg.best_of} by {cfg.reward}"
    records, blank = [], 0
    for i, prompt in enumerate(prompts):
        responses = [b.response for b in picked[i * cfg.num_samples: (i + 1) * cfg.num_samples]]
        kept = [r for r in responses if r.strip()]  # nothing for a person (label serve) to rank in a blank
        blank += len(responses) - len(kept)
        if kept:
            records.append({"prompt": prompt, "responses": kept, "policy": policy})
    n = write_jsonl(cfg.out, records)
    say(f"sample: {n} prompts x {cfg.num_samples} responses written to {cfg.out}"
        + (f" ({blank} blank responses dropped)" if blank else ""))
    return 0
