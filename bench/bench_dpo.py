"""DPO training throughput and peak memory: rlhfkit vs TRL's DPOTrainer (trl 1.16), same model, data, batch.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_dpo.py [--steps 30] [--threads 1] [--repeats 2]

Both sides train the same tiny Llama-style model (saved to a folder; TRL is given the path, see
/work/shared/TRL_NOTES.md) on the same text-only pairs, built with a word-level tokenizer so every prompt is exactly
P tokens and every completion exactly A tokens (+ EOS) on both sides. fp32, no bf16, no gradient checkpointing,
dropout off. Two settings:
  per_step:   the reference forward runs every step (TRL's default; rlhfkit --ref-mode per_step, frozen copy)
  precompute: reference log-probs computed once before training (TRL precompute_ref_log_probs; rlhfkit cached)
Each (implementation, setting) runs in its own subprocess, interleaved A B A B, `--repeats` times.

Reported per run: steady pairs/s (median step time, first three and last steps left out; TRL's steps are timestamped at
step end by a callback, rlhfkit's at the start of each objective call; logging is off on both sides),
pairs per CPU-second (the fair figure when other processes share the cores), the reference precompute
seconds, peak memory (CUDA: max_memory_allocated; CPU: peak RSS above the RSS after
importing torch, transformers, trl and rlhfkit in the same process) and the fraction of the measured fp32 torch.mm
throughput achieved (on CPU both by CPU time: mm best of 20 multiplies, steps by pairs per CPU-second),
with FLOPs ~ 6 x non-embedding params x tokens per step for training plus 2 x for a per-step reference forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from common import rss_mb as _rss_mb  # noqa: E402  (bench/ is the script's directory)

WORDS = [f"w{i}" for i in range(500)]


def make_assets(root: Path, prompt_len: int, completion_len: int, n_pairs: int, seed: int = 0) -> dict:
    """Word-level tokenizer + tiny model saved to root/model, and the pairs as JSONL (text only)."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlhfkit.config import TinyArch
    from rlhfkit.data import write_jsonl
    from rlhfkit.models import build_tiny, count_parameters, save_model

    vocab = {w: i for i, w in enumerate(["<|pad|>", "<|endoftext|>", "<|bos|>", "<unk>", *WORDS])}
    tok_obj = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok_obj.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tok_obj, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                  bos_token="<|bos|>", unk_token="<unk>", model_max_length=512)
    model = build_tiny(tok, TinyArch(hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512,
                                     max_positions=256), seed)
    save_model(model, tok, root / "model")
    rng = random.Random(seed)
    text = lambda n: " " + " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    pairs = [{"prompt": text(prompt_len).strip(), "chosen": text(completion_len), "rejected": text(completion_len)}
             for _ in range(n_pairs)]
    write_jsonl(root / "pairs.jsonl", pairs)
    embed = model.get_input_embeddings().weight.numel()
    return {"params": count_parameters(model), "non_embedding_params": count_parameters(model) - embed}


def mm_gflops(threads: int, device: str, n: int = 1024, reps: int = 20) -> dict[str, float]:
    """fp32 torch.mm GFLOP/s, best of `reps`, by wall clock and by process CPU time (like the step figures)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = _stamp()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = [min(best[i], _stamp()[i] - t[i]) for i in range(2)]
    return {"wall": 2 * n**3 / best[0] / 1e9, "cpu": 2 * n**3 / max(best[1], 1e-9) / 1e9}


# ---------------------------------------------------------------------------------------- one subprocess


def _peak_mb(device: str, rss_base: float) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_base


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _steady(stamps: list[tuple[float, float]], batch: int) -> dict[str, float]:
    """Median pairs/s over steady steps (not the first three or the last), by wall clock and by process CPU time
    (the CPU-time figure is robust to other processes sharing the cores; with 1 thread the two agree when idle)."""
    out = {}
    for i, name in enumerate(("pairs_per_s", "pairs_per_cpu_s")):
        durations = [b[i] - a[i] for a, b in zip(stamps, stamps[1:])][2:-1]
        out[name] = batch / statistics.median(durations)
    return out


def run_rlhfkit(root: Path, setting: str, steps: int, batch: int, threads: int, rss_base: float, device: str,
                shared_prefix: bool = True) -> dict:
    import torch

    import rlhfkit.dpo.offline as dpo  # setup() looks the objective up here
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from rlhfkit.dpo import DPOConfig, run_dpo

    starts: list[tuple[float, float]] = []  # one objective call per step (grad_accum 1) times the step
    make_objective = dpo.preference_objective

    def timed_objective(*a, **k):
        objective = make_objective(*a, **k)

        def timed(model, batch):
            if device == "cuda":
                torch.cuda.synchronize()
            starts.append(_stamp())
            return objective(model, batch)

        return timed

    dpo.preference_objective = timed_objective
    out = root / f"rlhfkit-{setting}-{time.time_ns()}"
    cfg = DPOConfig(
        data=DataConfig(train=str(root / "pairs.jsonl"), eval_fraction=0.0, max_length=256, max_prompt_length=128),
        model=ModelConfig(name=str(root / "model")),
        train=TrainConfig(batch_size=batch, max_steps=steps, log_every=10**6, save_every=10**6, eval_every=10**6,
                          threads=threads, progress=False),
        optim=OptimConfig(lr=1e-5, warmup_steps=0), loss="dpo", beta=0.1, kl_prompts=0,
        ref_mode="per_step" if setting == "per_step" else "cached", shared_prefix=shared_prefix, out=str(out))
    summary = run_dpo(cfg)
    return {**_steady(starts, batch), "ref_seconds": summary["ref_seconds"],
            "peak_mb": _peak_mb(device, rss_base), "final_loss": summary["train"]["train/loss"]}


def run_trl(root: Path, setting: str, steps: int, batch: int, threads: int, rss_base: float, device: str,
            shared_prefix: bool = False) -> dict:
    import torch
    from datasets import Dataset, disable_caching
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    disable_caching()  # a cached rerun would silently skip the reference precompute
    torch.set_num_threads(threads)
    ends: list[tuple[float, float]] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            ends.append(_stamp())

    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    args = DPOConfig(output_dir=str(root / f"trl-{setting}-{time.time_ns()}"), per_device_train_batch_size=batch,
                     max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant", bf16=False, fp16=False,
                     gradient_checkpointing=False, precompute_ref_log_probs=setting == "precompute",
                     max_length=None, report_to="none", logging_steps=10**6, save_strategy="no",
                     use_cpu=device == "cpu", dataloader_num_workers=0, disable_tqdm=True, beta=0.1, seed=0)
    tok = AutoTokenizer.from_pretrained(str(root / "model"))
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=str(root / "model"), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, callbacks=[StepTimes()])
    init_seconds = time.perf_counter() - t0
    result = trainer.train()
    return {**_steady(ends, batch), "init_seconds_incl_ref": init_seconds,
            "peak_mb": _peak_mb(device, rss_base), "final_loss": result.training_loss}


def child(argv: list[str]) -> None:
    impl, setting, root, steps, batch, threads, shared = argv[0], argv[1], Path(argv[2]), *map(int, argv[3:7])
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import rlhfkit.dpo  # noqa: F401

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rss_base = _rss_mb()
    fn = run_rlhfkit if impl == "rlhfkit" else run_trl
    print("RESULT " + json.dumps(fn(root, setting, steps, batch, threads, rss_base, device, bool(shared))))


# ------------------------------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-shared-prefix", action="store_true",
                   help="rlhfkit runs each pair as two rows like TRL (the ablation of rlhfkit.prefix)")
    p.add_argument("--out", default=None, help="write the results JSON here (default bench/results/dpo.json)")
    args = p.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    sizes = make_assets(root, args.prompt_len, args.completion_len, args.batch * args.steps)
    gflops = mm_gflops(args.threads, device)
    env = dict(os.environ, TQDM_DISABLE="1", HF_DATASETS_CACHE=str(root / "hf"), TRANSFORMERS_VERBOSITY="error")
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for setting in ("per_step", "precompute"):
            for impl in ("trl", "rlhfkit"):
                cmd = [sys.executable, __file__, "--child", impl, setting, str(root), str(args.steps),
                       str(args.batch), str(args.threads), str(int(not args.no_shared_prefix))]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{impl}/{setting} failed:\n{proc.stderr[-3000:]}")
                results.setdefault(f"{impl}/{setting}", []).append(json.loads(line[0][7:]))
    report(results, sizes, gflops, args, device)


def report(results: dict, sizes: dict, gflops: float, args, device: str) -> None:
    P, A, B = args.prompt_len, args.completion_len + 1, args.batch  # EOS appended to every completion
    two_rows = 2 * B * (P + A)  # (2B, T) per step
    shared = B * (P + 2 * A)  # one row per pair: the prompt once (chosen and rejected rarely share a first word)
    tokens = {"trl": two_rows, "rlhfkit": two_rows if args.no_shared_prefix else shared}
    summary = {"device": device, "threads": args.threads, "mm_gflops": gflops, "tokens_per_step": tokens,
               "load_avg": os.getloadavg(), **sizes, "runs": results, "table": {}}
    print(f"device {device}, threads {args.threads}, torch.mm {gflops['wall']:.1f} GFLOP/s wall, "
          f"{gflops['cpu']:.1f} per CPU-second, {sizes['non_embedding_params']/1e6:.2f}M "
          f"non-embedding params, prompt {P} + completions 2 x {A} tokens, tokens run per step: TRL "
          f"{tokens['trl']}, rlhfkit {tokens['rlhfkit']}; load avg {os.getloadavg()[0]:.2f}")
    print(f"{'impl/setting':<22}{'pairs/s':>9}{'pairs/cpu-s':>12}{'peak MB':>9}{'% of mm':>9}   ref/init s")
    for key, runs in results.items():
        wall = statistics.median(r["pairs_per_s"] for r in runs)
        pps = statistics.median(r["pairs_per_cpu_s"] for r in runs)
        peak = max(r["peak_mb"] for r in runs)
        flops_per_token = (6 + (2 if key.endswith("per_step") else 0)) * sizes["non_embedding_params"]
        flops_per_pair = flops_per_token * tokens[key.split("/")[0]] / args.batch  # the tokens it actually ran
        frac = pps * flops_per_pair / (gflops["cpu" if device == "cpu" else "wall"] * 1e9)
        ref = [round(r.get("ref_seconds", r.get("init_seconds_incl_ref", 0.0)), 2) for r in runs]
        summary["table"][key] = {"pairs_per_s": wall, "pairs_per_cpu_s": pps, "peak_mb": peak, "mm_fraction": frac}
        print(f"{key:<22}{wall:>9.1f}{pps:>12.1f}{peak:>9.0f}{100 * frac:>8.1f}%   {ref}")
    for setting in ("per_step", "precompute"):
        a, b = summary["table"][f"rlhfkit/{setting}"], summary["table"][f"trl/{setting}"]
        print(f"{setting}: rlhfkit / TRL pairs/s = {a['pairs_per_s'] / b['pairs_per_s']:.2f}x wall, "
              f"{a['pairs_per_cpu_s'] / b['pairs_per_cpu_s']:.2f}x per CPU-second, "
              f"peak memory {a['peak_mb']:.0f} vs {b['peak_mb']:.0f} MB")
    path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "dpo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))  # results/dpo.json is what bench/run.py collects


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
