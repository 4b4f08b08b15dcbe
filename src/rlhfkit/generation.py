"""Sampling with a KV cache: K completions per prompt, stop at EOS, left padding handled here and only here.

Layout of a Rollout: prompts are LEFT-padded to P columns, responses RIGHT-padded to A columns, so that the
joined sequence `cat(prompt_ids, response_ids)` (N, P + A) has every response starting at column P. Samples of one
prompt are consecutive rows (the group layout RLOO/GRPO baselines expect).

The distribution we sample from has ONE definition, `constrain_logits`: logits / temperature, EOS forbidden
(-inf) at response steps < min_new_tokens, then top-p truncation. The sampler draws from it, the Rollout's
`logprobs` are its renormalised log-probs, and every KL or PPO log-prob (`response_token_logprobs`) applies it
identically to the policy and the reference. Otherwise a constraint that changes the distribution (e.g. a
forbidden EOS) is scored as if it did not exist, and KL(pi || pi_ref) comes out wrong.

Top-p and KL: a token inside the policy's nucleus can lie outside the reference's, where the reference's
truncated probability is 0 and KL(pi || pi_ref) is infinite. So top_p < 1 is refused wherever a KL or PPO
log-prob is needed (`check_sampling(..., needs_logprobs=True)`); it stays available for plain sampling,
best-of-N and win rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit import ops
from rlhfkit.errors import RlhfkitError


@dataclass
class Rollout:
    """Shapes: N = prompts * samples_per_prompt, P prompt columns, A response columns."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, A) right-padded with pad
    response_mask: torch.Tensor  # (N, A) 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (N, A) sampled tokens' log-probs under constrain_logits (renormalised); 0 on padding
    ended: torch.Tensor  # (N,) bool: the response emitted EOS within the budget

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (N, P + A)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (N, P + A)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (N,)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> ids (N, P) and mask (N, P)."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)  # (N, P)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)  # (N, P)
    for i, p in enumerate(prompts):
        if p:
            ids[i, P - len(p) :] = torch.tensor(p)
            mask[i, P - len(p) :] = 1
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token. (N, T) -> (N, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def check_sampling(temperature: float, top_p: float, needs_logprobs: bool = False) -> None:
    """Refuse sampling settings that cannot work, with one clear line (RlhfkitError).

    needs_logprobs: the caller also scores samples by log-probs (a KL to a reference, PPO), which rules out
    greedy decoding (a point mass: no log-probs to compare) and top_p < 1 (see the module docstring).
    """
    if not temperature >= 0:  # also catches NaN
        raise RlhfkitError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise RlhfkitError(f"top_p must be in (0, 1] (1: off), got {top_p}")
    if not needs_logprobs:
        return
    if temperature == 0:
        raise RlhfkitError("temperature 0 (greedy decoding) has no sampling distribution, so a KL to the reference "
                           "or a PPO log-prob is undefined; use temperature > 0 (1: the policy's own distribution)")
    if top_p < 1:
        raise RlhfkitError(f"top_p {top_p} cannot be used where a KL to the reference is measured (PPO, eval "
                           "reward-kl): a sampled token outside the reference's nucleus has probability 0 under "
                           "it, so the KL is infinite; use top_p 1 (temperature and min_new_tokens still apply)")


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (nucleus sampling). (..., V)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum - sorted_logits.softmax(-1) >= top_p  # drop a token once the mass before it reaches top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def constrain_logits(logits: torch.Tensor, step: int | torch.Tensor, *, temperature: float = 1.0,
                     top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None) -> torch.Tensor:
    """The logits of the distribution we sample from: THE one definition (see the module docstring).

    logits: (..., V) fp32 raw next-token logits. step: the response-token index each row predicts, an int or an
    integer tensor broadcastable to logits[..., 0] (e.g. (A,) for a whole response). Returns (..., V):
    logits / temperature (temperature 0, greedy, leaves them unscaled: argmax is all that is used), EOS set to
    -inf where step < min_new_tokens, then top-p truncation (-inf outside the nucleus). `log_softmax` of the
    result is the constrained, renormalised log-prob. Pure: the input is never modified.
    """
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if eos_id is not None and min_new_tokens > 0:
        forbid = torch.as_tensor(step, device=logits.device) < min_new_tokens  # broadcasts to logits[..., 0]
        is_eos = torch.arange(logits.shape[-1], device=logits.device) == eos_id  # (V,)
        logits = logits.masked_fill(forbid[..., None] & is_eos, float("-inf"))
    return _top_p_filter(logits, top_p)  # after the EOS mask: the nucleus is taken of what may be sampled


def response_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
                            top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained log-probs of A response tokens, teacher-forced: what KL and PPO must use.

    logits: (B, A + 1, V) raw logits at the last prompt position and the A response positions (column t predicts
    response token t); ids: (B, A + 1) the last prompt token and the A response tokens. Returns log-probs (B, A)
    in fp32 under `constrain_logits` (-inf for a token the constraint forbids, e.g. on padding; mask before
    summing) and the constrained logits (B, A + 1, V) (for entropies). Keeps autograd when enabled.
    """
    steps = torch.arange(logits.shape[1], device=logits.device)  # (A + 1,): column t predicts response token t
    constrained = constrain_logits(logits.float(), steps, temperature=temperature, top_p=top_p,
                                   min_new_tokens=min_new_tokens, eos_id=eos_id)  # (B, A + 1, V)
    return ops.token_logprobs(constrained, ids), constrained  # (B, A), (B, A + 1, V)


def _draw(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row (N,) from softmax(logits) (N, V): the first token whose CDF exceeds u * total, u uniform.

    Exact inverse-CDF sampling. torch.multinomial on the CPU took ~16 ms for 256 x 4096 per step (a fifth of
    evaluation time); this takes ~1 ms, and only the (N, 1) uniforms come from the CPU generator, so the
    probabilities stay on the model's device. A token of probability 0 (forbidden EOS, outside top-p) is a flat
    step of the CDF and is never drawn; u < 1 in float32 keeps u * total below the last CDF value.
    """
    cdf = logits.softmax(-1).double().cumsum(-1)  # (N, V)
    u = torch.rand(logits.shape[0], 1, generator=generator).to(cdf)  # (N, 1) in [0, 1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # (N,)


@torch.no_grad()
def _sample_chunk(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int, max_new_tokens: int,
                  temperature: float, top_p: float, min_new_tokens: int, generator: torch.Generator) -> Rollout:
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    ids, attn = prompt_ids.to(device), prompt_mask.to(device)
    N = ids.shape[0]
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True)
    cache, logits = out.cache, out.logits[:, -1]  # (N, V)
    pos = positions(attn)[:, -1]  # (N,)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, logps, live = [], [], []
    for step in range(max_new_tokens):
        logits = constrain_logits(logits.float(), step, temperature=temperature, top_p=top_p,
                                  min_new_tokens=min_new_tokens, eos_id=eos_id)  # (N, V)
        if temperature > 0:
            tok = _draw(logits, generator)  # (N,)
        else:
            tok = logits.argmax(-1)
        logp = logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)  # (N,) renormalised under the constraint
        live.append(~done)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(torch.where(done, torch.zeros_like(logp), logp))
        done = done | (tok == eos_id)
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos + 1
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos[:, None], cache=cache,
                    use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    response_mask = torch.stack(live, 1).long()  # (N, A)
    return Rollout(prompt_ids, prompt_mask, torch.stack(tokens, 1).cpu(), response_mask.cpu(),
                   torch.stack(logps, 1).cpu(), done.cpu())


def _pad_cat(tensors: list[torch.Tensor], value: float, left: bool = False) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        fill = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)
        padded.append(torch.cat([fill, t] if left else [t, fill], dim=1))
    return torch.cat(padded, 0)


def sample(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int, num_samples: int = 1,
           max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, min_new_tokens: int = 0,
           seed: int = 0, batch_size: int = 64) -> Rollout:
    """Sample `num_samples` completions for each prompt (token lists), stopping each at EOS.

    temperature 0 is greedy. min_new_tokens forbids EOS before that many tokens (= max_new_tokens gives
    fixed-length completions). The distribution is `constrain_logits`; the Rollout's logprobs are its
    renormalised log-probs. Deterministic for a given seed and batch_size. Dropout is off while sampling.
    """
    check_sampling(temperature, top_p)
    generator = torch.Generator().manual_seed(seed)
    rows = [p for p in prompts for _ in range(num_samples)]
    was_training = model.training
    model.eval()
    try:
        chunks = [
            _sample_chunk(model, rows[i : i + batch_size], pad_id, eos_id, max_new_tokens, temperature, top_p,
                          min_new_tokens, generator)
            for i in range(0, len(rows), batch_size)
        ]
    finally:
        model.train(was_training)
    return Rollout(
        _pad_cat([c.prompt_ids for c in chunks], pad_id, left=True),
        _pad_cat([c.prompt_mask for c in chunks], 0, left=True),
        _pad_cat([c.response_ids for c in chunks], pad_id),
        _pad_cat([c.response_mask for c in chunks], 0),
        _pad_cat([c.logprobs for c in chunks], 0.0),
        torch.cat([c.ended for c in chunks]),
    )


def response_logprobs(model: Any, rollout: Rollout, batch_size: int | None = None, *, temperature: float = 1.0,
                      top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None) -> torch.Tensor:
    """Per-token log-probs (N, A) of the rollout's response tokens under `model`, 0 on padding.

    With the defaults: the raw distribution (temperature 1, no constraint). Pass the sampling settings to get
    the constrained distribution the rollout was sampled from (`constrain_logits`), as any KL must.
    Runs with gradients if the caller enables them; use under torch.no_grad() for reference / old log-probs.
    """
    ids, attn = rollout.input_ids, rollout.attention_mask  # (N, P + A)
    A = rollout.response_ids.shape[1]
    device = next(model.parameters()).device
    parts = []
    step = batch_size or ids.shape[0]
    for i in range(0, ids.shape[0], step):
        b_ids, b_attn = ids[i : i + step].to(device), attn[i : i + step].to(device)
        # only the last prompt position and the response positions go through the LM head
        logits = model(input_ids=b_ids, attention_mask=b_attn, position_ids=positions(b_attn),
                       logits_to_keep=A + 1).logits[:, -(A + 1):]  # (b, A + 1, V)
        lp, _ = response_token_logprobs(logits, b_ids[:, -(A + 1):], temperature=temperature, top_p=top_p,
                                        min_new_tokens=min_new_tokens, eos_id=eos_id)
        parts.append(lp)  # (b, A)
    logps = torch.cat(parts, 0)  # (N, A)
    # where, not *: a forbidden token on padding is -inf, and -inf * 0 is NaN
    return torch.where(rollout.response_mask.to(logps.device).bool(), logps, torch.zeros_like(logps))


@torch.no_grad()
def sequence_logprob_sums(model: Any, rollout: Rollout, batch_size: int | None = None, **constraint: Any
                          ) -> torch.Tensor:
    """log model(y | x) summed over each response (N,), with dropout off; for KL estimates, not for training.

    constraint: temperature, top_p, min_new_tokens, eos_id as in `constrain_logits` (default: none).
    """
    was_training = model.training
    model.eval()
    try:
        return response_logprobs(model, rollout, batch_size, **constraint).sum(-1)  # padding is already 0
    finally:
        model.train(was_training)


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Response texts without EOS / padding."""
    texts = []
    for ids, mask in zip(rollout.response_ids, rollout.response_mask):
        toks = ids[mask.bool()].tolist()
        if toks and toks[-1] == tokenizer.eos_token_id:
            toks = toks[:-1]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts


# ---------------------------------------------------------------------------------------------- rlhfkit sample
@dataclass(frozen=True)
class SampleConfig:
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
    """Scorer for --best-of: `rm:PATH`, `vader` or `module:function`."""
    batch_size: int = 64
    """Sequences per generation forward pass."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; longer prompts keep their end."""


def sample_main(argv: list[str]) -> int:
    from rlhfkit import config as config_lib
    from rlhfkit.bestofn import best_of_n
    from rlhfkit.config import ModelConfig
    from rlhfkit.data import read_records, write_jsonl
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.models import load_causal_lm
    from rlhfkit.tracking import say

    cfg = config_lib.parse(SampleConfig, argv, prog="rlhfkit sample")
    if not cfg.prompts:
        raise RlhfkitError("--prompts is required (a JSONL file of {\"prompt\": ...} records)")
    check_sampling(cfg.temperature, cfg.top_p)  # before loading the model
    if cfg.best_of > 1 and not cfg.reward:
        raise RlhfkitError("--best-of needs --reward (rm:PATH, vader or module:function) to pick the best")
    scorer = make_scorer(cfg.reward) if cfg.best_of > 1 else (lambda p, r: [0.0] * len(r))
    prompts = [r["prompt"] for r in read_records(cfg.prompts, "prompts")]
    model, tokenizer = load_causal_lm(ModelConfig(name=cfg.model), seed=cfg.seed)
    # K written responses per prompt = K rows of the prompt, each the best of `best_of` samples
    rows = [p for p in prompts for _ in range(cfg.num_samples)]
    picked = best_of_n(model, tokenizer, rows, scorer, cfg.best_of, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                       cfg.min_new_tokens, cfg.seed, cfg.batch_size, cfg.max_prompt_length, cfg.reward or "none")
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
