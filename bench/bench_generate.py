"""Sampling throughput: rlhfkit's sampler (`rlhfkit.generation.sample`) vs transformers' `model.generate`.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_generate.py [--threads 2] [--repeats 9] [--batch 16]
                                                           [--prompt-len 64] [--new-tokens 64]

Sides: `rlhfkit` (the sampler as shipped: for Llama models each decode step is the lean step of
`rlhfkit.decode`), `rlhfkit_no_lean` (the ablation: the same sampler with RLHFKIT_LEAN_DECODE=0, set around each
of its calls, so every decode step is transformers' forward over the StaticCache) and `transformers_generate`.

Model: a randomly initialised Llama (seed 0): hidden 256, 8 layers, 4 heads, MLP 688, vocabulary 8192, tied
embeddings, sdpa, fp32 -- 8,425,728 parameters (6,328,576 outside the embedding). Prompts: `--batch` random
token sequences of `--prompt-len` tokens (no padding). Both sides sample from the model's own distribution
(temperature 1, no top-k, no top-p) with min_new_tokens = max_new_tokens, so EOS is forbidden until the end and
both make exactly batch x new-tokens tokens per call; `generate` gets `do_sample=True` and the same
`pad/eos` ids.

All sides run in one process on the same model, in turn (A B C A B C; `--repeats` calls each, after one
warmup call each), so drifts in how busy the shared machine is hit all alike; the 1-minute load average is
recorded before every call. Figures: new tokens per second of wall time (median over calls, with min and
max), new tokens per CPU-second of the process (less sensitive to other processes), the paired ratios against
`generate` (median of per-repeat ratios of neighbouring calls), and the fp32 `torch.mm` roofline of the same
threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PAD, BOS, EOS = 0, 1, 2


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=688, vocab_size=8192, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def sides(model, prompts: list[list[int]], new_tokens: int) -> dict:
    """name -> a call that samples len(prompts) x new_tokens tokens."""
    import torch

    from rlhfkit.generation import sample

    ids = torch.tensor(prompts)  # (B, P), no padding
    attn = torch.ones_like(ids)

    def hf():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=attn, do_sample=True, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, temperature=1.0, top_k=None, top_p=None, pad_token_id=PAD,
                           eos_token_id=EOS)

    def rlhfkit():
        sample(model, prompts, PAD, EOS, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
               batch_size=len(prompts), seed=0)

    def rlhfkit_no_lean():  # RLHFKIT_LEAN_DECODE is read at each call
        os.environ["RLHFKIT_LEAN_DECODE"] = "0"
        try:
            rlhfkit()
        finally:
            del os.environ["RLHFKIT_LEAN_DECODE"]

    return {"rlhfkit": rlhfkit, "rlhfkit_no_lean": rlhfkit_no_lean, "transformers_generate": hf}


def measure(calls: dict, repeats: int, tokens: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warmup
    for r in range(repeats):
        for name, call in calls.items():
            load = common.load_average()["load1"]
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs[name].append({"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu, "load1": load})
            print(f"  repeat {r + 1}/{repeats} {name}: {tokens / wall:.0f} tokens/s, load {load:.2f}",
                  file=sys.stderr, flush=True)
    return runs


def summary_row(name: str, runs: list[dict]) -> dict:
    rates = [r["tokens_per_s"] for r in runs]
    loads = [r["load1"] for r in runs]
    return {"side": name, "tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in runs),
            "load1_range": [min(loads), max(loads)]}


def ratios_to_generate(side: str, runs: dict[str, list[dict]], rows: dict[str, dict]) -> tuple[float, float, float]:
    """`side` over `generate`: (ratio of median tokens/s, median of per-repeat ratios, ratio of tokens/CPU-s)."""
    other = "transformers_generate"
    paired = statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[side], runs[other]))
    return (rows[side]["tokens_per_s"] / rows[other]["tokens_per_s"], paired,
            rows[side]["tokens_per_cpu_s"] / rows[other]["tokens_per_cpu_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=16, help="sequences sampled per call")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    roofline = common.roofline(args.threads)
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt_len), generator=generator).tolist()
    tokens = args.batch * args.new_tokens
    runs = measure(sides(model, prompts, args.new_tokens), args.repeats, tokens)
    rows = {name: summary_row(name, r) for name, r in runs.items()}
    common.print_table(list(rows.values()), ["side", "tokens_per_s", "min", "max", "tokens_per_cpu_s", "load1_range"])
    ratios = {side: ratios_to_generate(side, runs, rows) for side in ("rlhfkit", "rlhfkit_no_lean")}
    print(f"\n({n_params:,} parameters, {args.batch} x {args.prompt_len} prompt tokens, {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), roofline {roofline['gflops']:.0f} GFLOP/s)")
    for side, (ratio, paired, cpu_ratio) in ratios.items():
        print(f"{side} / transformers generate: {ratio:.2f}x tokens/s by medians, {paired:.2f}x paired, "
              f"{cpu_ratio:.2f}x per CPU-second")
    ratio, paired, cpu_ratio = ratios["rlhfkit"]
    targets = common.target_rows([("sampler: new tokens/s vs transformers generate (paired)", paired, 1.2, ">=")])
    common.print_table(targets, ["target", "rlhfkit / TRL", "wanted", "result"])
    path = common.write_result("generate", {"targets": targets,
        "params": vars(args), "model_params": n_params, "roofline_gflops": roofline["gflops"], "runs": runs,
        "summary": list(rows.values()), "speedup_tokens_per_s": ratio, "speedup_paired": paired,
        "speedup_cpu": cpu_ratio, "no_lean_speedups": dict(zip(("tokens_per_s", "paired", "cpu"),
                                                                ratios["rlhfkit_no_lean"]))})
    print(f"written to {path}")


if __name__ == "__main__":
    if not common.child_main({}):
        main()
