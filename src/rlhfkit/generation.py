"""Sampling with a KV cache: K completions per prompt, stop at EOS, prompts left-padded.

Layout of a Rollout: prompts are LEFT-padded to P columns, responses RIGHT-padded to A columns, so that the
joined sequence `cat(prompt_ids, response_ids)` (N, P + A) has every response starting at column P. Samples of one
prompt are consecutive rows (the group layout RLOO/GRPO baselines expect).

What is sampled is `rlhfkit.sampling.constrain_logits` (temperature, EOS forbidden before min_new_tokens,
top-p), configured by one `SamplingConfig`; the Rollout's `logprobs` are its renormalised log-probs. Scoring a
rollout under a model (KL, PPO) is `rlhfkit.logprobs`' job, which applies the same constraint.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from rlhfkit.logprobs import eval_mode
# Scoring a rollout lives in rlhfkit.logprobs and the distribution in rlhfkit.sampling; these names stay
# importable from here, where callers of the sampler look for them.
from rlhfkit.logprobs import response_logprobs, response_token_logprobs, sequence_logprob_sums  # noqa: F401
from rlhfkit.ops import positions
from rlhfkit.sampling import Rollout, SamplingConfig, check_sampling, constrain_logits  # noqa: F401

# sample()'s defaults: 32 new tokens, 64 sequences per forward pass
SAMPLE_DEFAULTS = SamplingConfig(max_new_tokens=32, batch_size=64)


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
def _sample_chunk(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int, cfg: SamplingConfig,
                  generator: torch.Generator) -> Rollout:
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    ids, attn = prompt_ids.to(device), prompt_mask.to(device)
    N = ids.shape[0]
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=True)
    cache, logits = out.cache, out.logits[:, -1]  # (N, V)
    pos = positions(attn)[:, -1]  # (N,)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, logps, live = [], [], []
    constraint = cfg.constraint(eos_id)
    for step in range(cfg.max_new_tokens):
        logits = constrain_logits(logits.float(), step, **constraint)  # (N, V)
        tok = _draw(logits, generator) if cfg.temperature > 0 else logits.argmax(-1)  # (N,)
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


def check_room(model: Any, prompts: list[list[int]], max_new_tokens: int,
               where: list[tuple[str, int]] | None = None) -> None:
    """Refuse (one line) a prompt that leaves no room for `max_new_tokens` in the model's context; `where` gives
    each prompt's (file, line) to name. Positions past the context are garbage for rotary models and an index
    error for learned ones, so this is checked before sampling, not discovered in it."""
    from rlhfkit.errors import DataError, RlhfkitError
    from rlhfkit.models import context_length

    context = context_length(model)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]), default=None)
    if context is None or longest is None or len(prompts[longest]) + max_new_tokens <= context:
        return
    what = (f"a prompt of {len(prompts[longest])} tokens leaves no room for {max_new_tokens} new tokens in the "
            f"model's context of {context} positions")
    if where is not None:
        raise DataError(*where[longest], what + " (shorten the prompt, or sample fewer tokens)")
    raise RlhfkitError(what)


def sample(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int, sampling: SamplingConfig | None = None,
           *, num_samples: int | None = None, seed: int = 0, where: list[tuple[str, int]] | None = None,
           **fields: Any) -> Rollout:
    """Sample completions for each prompt (token lists), stopping each at EOS.

    sampling: the distribution, samples per prompt and batch size (default `SAMPLE_DEFAULTS`); num_samples
    (samples per prompt) and `fields` (any SamplingConfig field, e.g. max_new_tokens=8) override it.
    temperature 0 is greedy. min_new_tokens forbids EOS before that many tokens (= max_new_tokens gives
    fixed-length completions). The Rollout's logprobs are the renormalised log-probs of `constrain_logits`.
    Deterministic for a given seed and batch size. Dropout is off while sampling. where: each prompt's (file,
    line), named when a prompt leaves no room for max_new_tokens in the model's context (`check_room`).
    """
    cfg = replace(sampling or SAMPLE_DEFAULTS, **fields)
    check_sampling(cfg.temperature, cfg.top_p)
    check_room(model, prompts, cfg.max_new_tokens, where)
    k = cfg.samples_per_prompt if num_samples is None else num_samples
    generator = torch.Generator().manual_seed(seed)
    rows = [p for p in prompts for _ in range(k)]
    with eval_mode(model):
        chunks = [_sample_chunk(model, rows[i : i + cfg.batch_size], pad_id, eos_id, cfg, generator)
                  for i in range(0, len(rows), cfg.batch_size)]
    return Rollout(
        _pad_cat([c.prompt_ids for c in chunks], pad_id, left=True),
        _pad_cat([c.prompt_mask for c in chunks], 0, left=True),
        _pad_cat([c.response_ids for c in chunks], pad_id),
        _pad_cat([c.response_mask for c in chunks], 0),
        _pad_cat([c.logprobs for c in chunks], 0.0),
        torch.cat([c.ended for c in chunks]),
    )


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Response texts without EOS / padding."""
    texts = []
    for ids, mask in zip(rollout.response_ids, rollout.response_mask):
        toks = ids[mask.bool()].tolist()
        if toks and toks[-1] == tokenizer.eos_token_id:
            toks = toks[:-1]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts


def sample_texts(model: Any, tokenizer: Any, prompts: list[Any], sampling: SamplingConfig | None = None, *,
                 num_samples: int | None = None, seed: int = 0, **fields: Any) -> tuple[list[list[str]], list[list[int]]]:
    """K sampled response texts per prompt (`sample` on the prompts as training encodes them, same arguments) and
    their lengths in tokens (EOS counted): (texts[prompt][k], lengths[prompt][k])."""
    from rlhfkit.data import encode_prompt

    rollout = sample(model, [encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id,
                     tokenizer.eos_token_id, sampling, num_samples=num_samples, seed=seed, **fields)
    texts, lengths = decode_responses(tokenizer, rollout), [int(n) for n in rollout.lengths.tolist()]
    k = len(texts) // len(prompts) if prompts else 0
    return ([texts[i * k:(i + 1) * k] for i in range(len(prompts))],
            [lengths[i * k:(i + 1) * k] for i in range(len(prompts))])
