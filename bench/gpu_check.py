"""The GPU path, checked on a CUDA machine: exactness and peak memory of the chunked LM head, padding-free rows and
the sampler in fp32 and bf16. Prints one JSON object per check and writes them all to --out.

    python bench/gpu_check.py [--out gpu_check.json] [--vocab 49152]

Not a test (CI has no GPU) and asserts nothing: it reports figures, which docs/performance.md quotes with the
date and machine. Shapes: a random Llama with SmolLM2's width and vocabulary (hidden 576, 9 heads, 3 key/value
heads, SwiGLU 1536, vocabulary 49,152) and 4 layers; SFT batch 8 x 256 tokens (64 prompt + 64-192 response);
DPO 8 pairs, prompt 64, responses 64-128; sampling 64 prompts x 64 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager

import torch

DEVICE = "cuda"  # --device cpu: a dry run of the script itself (no peak memory figures)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@contextmanager
def head_mode(mode: str):
    old = os.environ.get("RLHFKIT_LM_HEAD")
    os.environ["RLHFKIT_LM_HEAD"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RLHFKIT_LM_HEAD", None)
        else:
            os.environ["RLHFKIT_LM_HEAD"] = old


def build(vocab: int, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=576, num_hidden_layers=4, num_attention_heads=9,
                      num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=1024,
                      tie_word_embeddings=True, attn_implementation="sdpa", pad_token_id=0, eos_token_id=1,
                      bos_token_id=2)
    return LlamaForCausalLM(cfg).to(DEVICE, dtype)


def sft_examples(vocab: int, n: int = 8, seed: int = 1):
    from rlhfkit.data import Encoded

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        resp = int(torch.randint(64, 193, (1,), generator=g))
        ids = torch.randint(3, vocab, (64 + resp,), generator=g).tolist()
        out.append(Encoded(ids, [0] * 64 + [1] * resp))
    return out


def pairs(vocab: int, n: int = 8, seed: int = 2):
    from rlhfkit.data import Encoded
    from rlhfkit.dpo.objective import Pair

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, vocab, (64,), generator=g).tolist()
        sides = []
        for _ in range(2):
            k = int(torch.randint(64, 129, (1,), generator=g))
            sides.append(Encoded(prompt + torch.randint(3, vocab, (k,), generator=g).tolist() + [1],
                                 [0] * 64 + [1] * (k + 1)))
        out.append(Pair(*sides))
    return out


def step(model, objective, batch) -> dict:
    """One forward + backward: loss, grads, seconds and CUDA peak above the model's own memory."""
    model.zero_grad(set_to_none=True)
    cuda = DEVICE == "cuda"
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    loss, _ = objective(model, batch)
    loss.backward()
    sync()
    seconds = time.perf_counter() - t0
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": float(loss), "grads": grads, "seconds": seconds,
            "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")}


def max_rel_grad_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-12)) for n in b)


def compare(name: str, model, objective, batch_a, batch_b, mode_a: str, mode_b: str) -> dict:
    """Run A and B twice each (the first of each warms up), report the second runs."""
    runs = {}
    for _ in range(2):
        for label, batch, mode in (("a", batch_a, mode_a), ("b", batch_b, mode_b)):
            with head_mode(mode):
                runs[label] = step(model, objective, batch.to(DEVICE))
    a, b = runs["a"], runs["b"]
    return {"check": name, "dtype": str(next(model.parameters()).dtype), "loss_a": a["loss"], "loss_b": b["loss"],
            "loss_abs_diff": abs(a["loss"] - b["loss"]), "max_rel_grad_diff": max_rel_grad_diff(a["grads"], b["grads"]),
            "peak_mb_a": round(a["peak_mb"], 1), "peak_mb_b": round(b["peak_mb"], 1),
            "peak_ratio_a_over_b": round(a["peak_mb"] / b["peak_mb"], 3) if b["peak_mb"] > 0 else None,
            "ms_a": round(1e3 * a["seconds"], 1), "ms_b": round(1e3 * b["seconds"], 1)}


def check_sft(vocab: int, dtype: torch.dtype) -> list[dict]:
    from rlhfkit.data import collate
    from rlhfkit.data.packing import pack_groups
    from rlhfkit.sft import lm_objective

    model = build(vocab, dtype)
    examples = sft_examples(vocab)
    padded = collate(examples, 0)
    packed = pack_groups([[e] for e in examples], 0, row_tokens=0)
    return [compare("sft: chunked head (a) vs plain (b), padded rows", model, lm_objective, padded, padded,
                    "chunked", "plain"),
            compare("sft: padding-free + chunked (a) vs padded + plain (b)", model, lm_objective, packed, padded,
                    "chunked", "plain")]


def check_dpo(vocab: int, dtype: torch.dtype) -> list[dict]:
    from rlhfkit.dpo.config import DPOConfig
    from rlhfkit.dpo.objective import PAIR_LOSSES, collate_pairs, preference_objective
    from rlhfkit.logprobs import Reference

    model = build(vocab, dtype)
    ref = build(vocab, dtype, seed=0).requires_grad_(False).eval()
    cfg = DPOConfig()
    objective = preference_objective(PAIR_LOSSES["dpo"](cfg), Reference(model, ref), beta=cfg.beta)
    ps = pairs(vocab)
    packed, rows = collate_pairs(ps, 0, shared_prefix=True), collate_pairs(ps, 0, shared_prefix=False)
    return [compare("dpo (reference each step): padding-free shared-prefix + chunked (a) vs rows + plain (b)", model,
                    objective, packed, rows, "chunked", "plain")]


@torch.no_grad()
def check_sampler(vocab: int, dtype: torch.dtype) -> dict:
    """Greedy sampler == a no-cache greedy decode; its log-probs == a fresh forward's; tokens/s vs generate."""
    from rlhfkit.generation import sample
    from rlhfkit.logprobs import response_logprobs

    model = build(vocab, dtype).eval()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, vocab, (int(torch.randint(16, 65, (1,), generator=g)),), generator=g).tolist()
               for _ in range(64)]
    greedy = sample(model, prompts[:8], 0, 1, max_new_tokens=16, temperature=0.0, batch_size=8)
    same = True
    for i, p in enumerate(prompts[:8]):  # no-cache greedy decode, one row at a time
        seq = torch.tensor([p], device=DEVICE)
        for t in range(16):
            nxt = model(input_ids=seq, use_cache=False).logits[0, -1].float().argmax()
            if int(nxt) != int(greedy.response_ids[i, t]):
                same = False
                break
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
            if int(nxt) == 1:
                break
    rollout = sample(model, prompts, 0, 1, max_new_tokens=64, min_new_tokens=64, temperature=1.0, batch_size=64,
                     seed=0)
    fresh = response_logprobs(model, rollout, min_new_tokens=64, eos_id=1).cpu()
    logp_diff = float((fresh - rollout.logprobs).abs().max())
    sync()
    t0 = time.perf_counter()
    sample(model, prompts, 0, 1, max_new_tokens=64, min_new_tokens=64, temperature=1.0, batch_size=64, seed=1)
    sync()
    ours = 64 * 64 / (time.perf_counter() - t0)
    ids = torch.tensor([[0] * (64 - len(p)) + p for p in prompts], device=DEVICE)
    mask = (ids != 0).long()
    model.generation_config.pad_token_id = 0
    for _ in range(2):  # warm-up, then timed
        sync()
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=64, min_new_tokens=64,
                       top_k=0, top_p=1.0)
        sync()
        theirs = 64 * 64 / (time.perf_counter() - t0)
    return {"check": "sampler", "dtype": str(dtype), "greedy_equals_no_cache": same, "logprob_max_abs_diff": logp_diff,
            "rlhfkit_tokens_per_s": round(ours), "generate_tokens_per_s": round(theirs),
            "ratio": round(ours / theirs, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    results = [{"device": name, "torch": torch.__version__}]
    for dtype in (torch.float32, torch.bfloat16):
        for fn in (check_sft, check_dpo):
            try:
                rows = fn(args.vocab, dtype)
            except Exception as err:  # report and go on: one broken check must not hide the others
                rows = [{"check": fn.__name__, "dtype": str(dtype), "error": repr(err)[:500]}]
            for row in rows:
                print(json.dumps(row), flush=True)
                results.append(row)
        try:
            row = check_sampler(args.vocab, dtype)
        except Exception as err:
            row = {"check": "sampler", "dtype": str(dtype), "error": repr(err)[:500]}
        print(json.dumps(row), flush=True)
        results.append(row)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
