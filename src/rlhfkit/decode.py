"""A lean one-token decode step for Llama models: the sampler's per-step forward without transformers' plumbing.

For one new token per row, transformers' forward spends most of its time outside the arithmetic at small and
medium sizes (mask creation, output-capture decorators, keyword plumbing, attention-interface dispatch, cache
bookkeeping), repeated every step. `lean_step` runs the same layer math as a tight loop over the model's OWN
submodules -- each decoder layer's `input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`,
`mlp`, then the final `norm` and `lm_head`, `rotary_emb` for cos/sin and transformers' `apply_rotary_pos_emb` --
writing the new key/value into the prefill's StaticCache tensors (N, kv_heads, P + A, head_dim) in place and
attending with `F.scaled_dot_product_attention` under the sampler's preallocated additive mask. Hooks on those
submodules still run and a LoRA layer in place of a projection is called like the projection it wraps, so peft
LoRA models qualify (unwrapped with `get_base_model`).

Where it applies (`lean_model`): a transformers `LlamaForCausalLM` (exact classes: a subclass may change the
math), eager or sdpa attention over full (non-sliding) layers, and nothing attached to the modules whose forward
it skips (the peft wrapper, the causal LM, the decoder stack): no forward hook, no accelerate hook, no forward
replaced on the instance. Elsewhere the sampler keeps
transformers' forward. RLHFKIT_LEAN_DECODE=0 (read at each call) turns it off, for ablations.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F


def _hooked(module: Any) -> bool:
    """Whether calling `module` runs more than its class's forward -- a forward hook, an accelerate dispatch hook,
    or a forward replaced on the instance (accelerate's autocast wrapper) -- which skipping the forward would miss."""
    return (bool(module._forward_hooks or module._forward_pre_hooks) or hasattr(module, "_hf_hook")
            or "forward" in vars(module))


def lean_model(model: Any) -> Any | None:
    """The `LlamaForCausalLM` under `model` (a peft LoRA wrapper unwrapped) when `lean_step` computes exactly its
    forward, else None (see the module docstring)."""
    from transformers.models.llama import modeling_llama as llama

    from rlhfkit.generation import _takes_additive_mask
    from rlhfkit.models import is_peft

    if os.environ.get("RLHFKIT_LEAN_DECODE", "1") == "0":
        return None
    skipped = [model]
    if is_peft(model):
        if any(c.peft_type != "LORA" for c in model.peft_config.values()):  # PeftType is a str enum
            return None  # prompt/prefix tuning changes the forward itself
        model = model.get_base_model()
        skipped += [skipped[0].base_model, model]
    if type(model) is not llama.LlamaForCausalLM or type(model.model) is not llama.LlamaModel:
        return None
    layers = model.model.layers[: model.config.num_hidden_layers]
    if any(type(layer) is not llama.LlamaDecoderLayer or type(layer.self_attn) is not llama.LlamaAttention
           for layer in layers):
        return None
    if not _takes_additive_mask(model.config) or any(map(_hooked, skipped + [model.model])):
        return None
    return model


Step = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (tok (N,), pos (N, 1), column) -> logits (N, V)


def lean_step(model: Any, cache: Any, mask: torch.Tensor) -> Step:
    """The decode step `step(tok (N,), pos (N, 1), column) -> logits (N, V)` of `model` (from `lean_model`):
    the token at position `pos` is written into column `column` of the prefilled StaticCache `cache`, and
    attends to columns [0, column] under `mask` (N, 1, 1, P + A), 0 where attended and the dtype's minimum
    elsewhere (the caller switches column `column` on before the call)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    base = model.model
    layers = base.layers[: model.config.num_hidden_layers]
    kv = [(layer.keys, layer.values) for layer in cache.layers]  # (N, H_kv, P + A, D) each, filled by the prefill
    gqa = layers[0].self_attn.num_key_value_groups > 1  # grouped KV heads: SDPA repeats them

    def step(tok: torch.Tensor, pos: torch.Tensor, column: int) -> torch.Tensor:
        N, width = tok.shape[0], column + 1
        h = base.embed_tokens(tok[:, None])  # (N, 1, C)
        cos, sin = base.rotary_emb(h, pos)  # (N, 1, D) each
        bias = mask[..., :width]  # (N, 1, 1, width): columns past `column` are masked anyway
        for layer, (keys, values) in zip(layers, kv):
            attn = layer.self_attn
            x = layer.input_layernorm(h)  # (N, 1, C)
            q = attn.q_proj(x).view(N, 1, -1, attn.head_dim).transpose(1, 2)  # (N, H, 1, D)
            k = attn.k_proj(x).view(N, 1, -1, attn.head_dim).transpose(1, 2)  # (N, H_kv, 1, D)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[:, :, column] = k[:, :, 0]
            values[:, :, column] = attn.v_proj(x).view(N, -1, attn.head_dim)  # (N, H_kv, D)
            o = F.scaled_dot_product_attention(q, keys[:, :, :width], values[:, :, :width], attn_mask=bias,
                                               scale=attn.scaling, enable_gqa=gqa)  # (N, H, 1, D)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(N, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return model.lm_head(base.norm(h))[:, -1]  # (N, V)

    return step
