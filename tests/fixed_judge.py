"""A tiny causal LM whose answer is fixed by construction, to test judges end to end without a real judge model
(import it as `from fixed_judge import build_fixed_judge`)."""

from __future__ import annotations

import math
from pathlib import Path


def build_fixed_judge(path: Path, answer: str = "A", runner_up: str = "B", odds: float = 3.0) -> Path:
    """Save a tiny Llama that answers `answer` and then EOS whatever it is asked, with
    P(answer) / P(runner_up) = odds at the answer token, to `path` (model + tokenizer, no chat template).

    Attention and MLP write nothing (their output projections are zero), so a position's hidden state is its
    token's embedding: e0 for every token but `answer`, whose embedding is e1. The head maps e0 to `answer` (logit
    c) and `runner_up` (logit c - ln odds) after the final RMSNorm scales e0 by sqrt(hidden), and e1 to EOS."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhfkit.config import TinyArch
    from rlhfkit.models import build_tiny, train_bpe_tokenizer
    from toy import toy_texts

    tok = train_bpe_tokenizer(toy_texts(300) + [f"{answer} {runner_up}"], vocab_size=300)
    config = build_tiny(tok, TinyArch(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                                      max_positions=1024), seed=0).config
    config.tie_word_embeddings = False  # the head and the embeddings are set apart below
    model = LlamaForCausalLM(config)
    answer_id, runner_up_id = tok.convert_tokens_to_ids(answer), tok.convert_tokens_to_ids(runner_up)
    hidden = config.hidden_size
    scale = math.sqrt(hidden)  # RMSNorm of a one-hot vector
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[answer_id] = torch.nn.functional.one_hot(torch.tensor(1), hidden).float()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer_id, 0] = 5.0 / scale
        model.lm_head.weight[runner_up_id, 0] = (5.0 - math.log(odds)) / scale
        model.lm_head.weight[tok.eos_token_id, 1] = 10.0 / scale
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
