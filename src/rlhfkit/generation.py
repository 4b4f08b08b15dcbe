"""Sampling with a KV cache: K completions per prompt, stop at EOS, prompts left-padded.

Layout of a Rollout: prompts are LEFT-padded to P columns, responses RIGHT-padded to A columns, so that the
joined sequence `cat(prompt_ids, response_ids)` (N, P + A) has every response starting at column P. Samples of one
prompt are consecutive rows (the group layout RLOO/GRPO baselines expect).

What is sampled is `rlhfkit.sampling.constrain_logits` (temperature, EOS forbidden before min_new_tokens,
top-p), configured by one `SamplingConfig`; the Rollout's `logprobs` are its renormalised log-probs. Scoring a
rollout under a model (KL, PPO) is `rlhfkit.logprobs`' job, which applies the same constraint.

The sampler seam: whatever produces rollouts for training is a `Sampler` -- `sample(prompts, sampling, seed)
-> Rollout`, `load_weights(model)` to receive the policy's weights after each update, and `exact_logprobs`.
`TorchSampler` (the default) runs `sample` below on the training module itself, so it has nothing to load,
and its log-probs are those of the same weights in the same precision as the training forward: with one PPO
epoch and no value head the RL step uses them as the old log-probs instead of a second policy forward. A vLLM
(or other inference-engine) sampler for GPU users fits the same three members: its `sample` maps
SamplingConfig onto the engine's sampling parameters (temperature, min_tokens, top_p, n = samples_per_prompt,
seed) and the engine's output onto the Rollout layout above, its `load_weights` copies the policy's state
dict into the engine, and `exact_logprobs` is False (other kernels and precision: the step then recomputes
old log-probs with the training forward). Not built here: vLLM is not a dependency.

Speed (CPU, `bench/bench_generate.py`): a static KV cache (transformers' StaticCache) of P + A columns, one
attention mask over those columns whose future columns are switched on as tokens arrive, the prefill's LM
head on its last column only, all uniforms of a batch drawn up front, and no per-step allocation that can be
hoisted. For Llama models each decode step skips transformers' forward for a tight loop over the model's own
layers (`rlhfkit.decode`, exact to float rounding; RLHFKIT_LEAN_DECODE=0 turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from rlhfkit.decode import Step, lean_model, lean_step
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


def _draw(logprobs: torch.Tensor, u: torch.Tensor, cdf: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row (N,) from the categorical exp(logprobs) (N, V): the first token whose CDF exceeds
    u * total, u (N,) uniforms in [0, 1). cdf: an optional float64 (N, V) buffer the CDF is written into (a
    fresh 1 MB float64 tensor per step cost ~0.8 ms on the CPU in allocation and page faults, 8x the scan).

    Exact inverse-CDF sampling, the CDF summed in float64. torch.multinomial on the CPU took ~16 ms for
    256 x 4096 per step (a fifth of evaluation time); this takes ~1 ms, and only the uniforms come from the CPU
    generator, so the probabilities stay on the model's device. A token of probability 0 (forbidden EOS, outside
    top-p) is a flat step of the CDF and is never drawn; u < 1 in float32 keeps u * total below the last value.
    """
    cdf = torch.cumsum(logprobs.exp(), -1, dtype=torch.float64, out=cdf)  # (N, V)
    return torch.searchsorted(cdf, u.to(cdf)[:, None] * cdf[:, -1:], right=True).squeeze(-1)  # (N,)


def _check_every(device: torch.device) -> int:
    """Steps between 'has every row ended?' checks. On the CPU the check is free; on an accelerator it is a
    host sync that stalls the queue, so it runs every 8 steps (steps after the last EOS only write padding and
    are cut off, so the Rollout is the same either way)."""
    return 1 if device.type == "cpu" else 8


def _takes_additive_mask(config: Any) -> bool:
    """Whether every layer of the model attends through a 4D additive mask, which transformers then uses as
    given: full attention (no sliding window) under eager or sdpa. Otherwise (flash attention, sliding layers)
    the sampler passes the 2D mask and transformers builds each step's mask."""
    config = config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    sliding = getattr(config, "sliding_window", None) is not None and not layer_types
    return (config._attn_implementation in ("eager", "sdpa") and not sliding
            and all(t == "full_attention" for t in layer_types))


def _decode_step(model: Any, cache: Any, mask: torch.Tensor, attn: torch.Tensor) -> Step:
    """The per-token forward `step(tok (N,), pos (N, 1), column) -> logits (N, V)` after the prefill: the lean
    Llama step (`rlhfkit.decode`) where the model qualifies and the mask is additive, else transformers' forward
    with the StaticCache (which tracks the column itself)."""
    lean = lean_model(model) if mask is not attn else None
    if lean is not None:
        return lean_step(lean, cache, mask)

    def step(tok: torch.Tensor, pos: torch.Tensor, column: int) -> torch.Tensor:
        return model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=cache,
                     use_cache=True).logits[:, -1]  # (N, V)

    return step


@torch.no_grad()
def _sample_chunk(model: Any, prompts: list[list[int]], pad_id: int, eos_id: int, cfg: SamplingConfig,
                  generator: torch.Generator, check_every: int | None = None) -> Rollout:
    """Sample one batch of N prompts (see `sample`): a prefill, then one forward per new token.

    Nothing grows or is rebuilt per step: a static KV cache of P + A columns, one attention mask over all
    P + A columns whose future columns are masked and switched on as tokens arrive (a 4D additive mask the
    model uses as given, where it can; see `_takes_additive_mask`), the (A, N) uniforms drawn up front, tokens
    and log-probs written into preallocated (N, A) tensors. The prefill runs the LM head on its last column only.
    """
    from transformers import StaticCache

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    (N, P), A = prompt_ids.shape, cfg.max_new_tokens
    uniforms = torch.rand(A, N, generator=generator).to(device)  # (A, N): step t draws uniforms[t]
    attn = torch.zeros(N, P + A, dtype=torch.long, device=device)  # (N, P + A), future columns 0
    attn[:, :P] = prompt_mask.to(device)
    pos = positions(attn[:, :P])  # (N, P)
    cache = StaticCache(config=model.config, max_cache_len=P + A)
    logits = model(input_ids=prompt_ids.to(device), attention_mask=attn, position_ids=pos, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]  # (N, V)
    pos = pos[:, -1:]  # (N, 1)
    mask = attn
    if _takes_additive_mask(model.config):  # (N, 1, 1, P + A): 0 where attended, the dtype's min elsewhere
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(N, 1, 1, P + A, dtype=dtype, device=device).masked_fill(
            attn[:, None, None, :] == 0, torch.finfo(dtype).min)
    forward = _decode_step(model, cache, mask, attn)
    tokens = torch.full((N, A), pad_id, dtype=torch.long, device=device)  # (N, A)
    logps = torch.zeros(N, A, device=device)  # (N, A)
    live = torch.zeros(N, A, dtype=torch.bool, device=device)  # (N, A)
    done = torch.zeros(N, dtype=torch.bool, device=device)  # (N,)
    constraint, every = cfg.constraint(eos_id), check_every or _check_every(device)
    cdf = torch.empty(logits.shape, dtype=torch.float64, device=device)  # (N, V) _draw's buffer
    for step in range(A):
        logits = constrain_logits(logits.float(), step, **constraint)  # (N, V)
        logprobs = logits.log_softmax(-1)  # (N, V) renormalised under the constraint
        tok = _draw(logprobs, uniforms[step], cdf) if cfg.temperature > 0 else logits.argmax(-1)  # (N,)
        live[:, step] = ~done
        tokens[:, step] = tok.masked_fill(done, pad_id)
        logps[:, step] = logprobs.gather(-1, tok[:, None]).squeeze(-1).masked_fill(done, 0.0)
        done |= tok == eos_id
        if step == A - 1 or ((step + 1) % every == 0 and bool(done.all())):
            break
        mask[..., P + step] = 1 if mask is attn else 0  # the new token's column joins the context
        pos = pos + 1
        logits = forward(tok, pos, P + step)  # (N, V)
    width = int(live.any(0).sum())  # columns up to the step where the last row ended
    return Rollout(prompt_ids, prompt_mask, tokens[:, :width].cpu(), live[:, :width].long().cpu(),
                   logps[:, :width].cpu(), done.cpu())


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


class Sampler(Protocol):
    """What produces rollouts for training (see the module docstring)."""

    exact_logprobs: bool
    """True when Rollout.logprobs equal the training forward's log-probs to float rounding (same weights, same
    precision, same `constrain_logits`), so an RL step may use them as its old log-probs."""

    def sample(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int) -> Rollout:
        """K = sampling.samples_per_prompt completions per prompt (token lists), as `sample` lays them out."""
        ...

    def load_weights(self, model: Any) -> None:
        """Take the policy's current weights (an RL step calls this after its updates, before the next rollout)."""
        ...


@dataclass
class TorchSampler:
    """The default `Sampler`: `sample` on the policy module itself (it sees every update as it happens, so
    `load_weights` has nothing to copy)."""

    model: Any
    pad_id: int
    eos_id: int
    exact_logprobs: bool = True

    def sample(self, prompts: list[list[int]], sampling: SamplingConfig, seed: int) -> Rollout:
        return sample(self.model, prompts, self.pad_id, self.eos_id, sampling, seed=seed)

    def load_weights(self, model: Any) -> None:
        self.model = model


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
