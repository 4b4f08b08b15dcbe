"""Reward-model training throughput and peak memory: rlhfkit vs TRL's RewardTrainer (trl 1.16), same model and data.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_rm.py [--steps 30] [--threads 1] [--repeats 2]

Both sides train the same tiny Llama-style trunk (rlhfkit's `tiny` preset, d=192, 4 layers, saved to a folder as a
causal LM; each side adds a fresh 1-output `score` head) on the same token ids: a word-level tokenizer makes every
prompt exactly P tokens and every response exactly A tokens + EOS, and both sides get rlhfkit's `encode_pair`
output (TRL as pre-tokenised `chosen_ids` / `rejected_ids`). fp32, bf16 off, gradient checkpointing off, dropout off
(/work/shared/TRL_NOTES.md), AdamW, lr 1e-5, clip 1.0, no logging, evaluation or checkpoints inside the timed steps.
Two settings, each with the same number of preference pairs per optimizer step on both sides:
  pairs:    B (x, y_w, y_l) pairs per step: both sides run 2B sequences.
  rankings: R rankings of K responses per step = R * C(K,2) pairs. rlhfkit scores each response once and forms all
            pairs from the K rewards (InstructGPT); TRL is given the expanded pairs (it has no ranking input), so it
            runs 2 * R * C(K,2) sequences for the same pairs and the same mean Bradley-Terry loss.
Each (side, setting) runs in its own subprocess, interleaved A B A B, `--repeats` times; the table gives medians.

Per run: steady pairs/s (median step time, the first two and the last step left out; rlhfkit's steps are timed at
the start of each objective call, TRL's at each step start by a callback), peak RSS of the process (ru_maxrss), and
and the training increase: high-water RSS at the start of the last step minus the RSS before the first step (imports,
model load and rlhfkit's end-of-run checkpoint / save excluded; TRL imports more, so the process peaks differ more).
Results: printed table + bench/results/bench_rm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from common import rss_mb as _rss_mb  # noqa: E402
from common import peak_rss_mb as _peak_rss_mb  # noqa: E402  (bench/ is the script's directory)

WORDS = [f"w{i}" for i in range(500)]
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------- shared assets
def word_tokenizer():
    """One word = one token, so lengths are exact and identical on both sides."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|pad|>", "<|endoftext|>", "<|bos|>", "<unk>", *WORDS])}
    tok_obj = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok_obj.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                   bos_token="<|bos|>", unk_token="<unk>", model_max_length=512)


def make_assets(root: Path, prompt_len: int, response_len: int, n_prompts: int, k: int, seed: int = 0) -> dict:
    """root/model (tiny causal LM + tokenizer) and root/rankings_k{k}.jsonl (K responses per prompt)."""
    import random

    from rlhfkit.config import TinyArch
    from rlhfkit.data import write_jsonl
    from rlhfkit.models import build_tiny, count_parameters, save_model

    tok = word_tokenizer()
    model = build_tiny(tok, TinyArch(max_positions=256), seed)
    if not (root / "model").exists():
        save_model(model, tok, root / "model")
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    recs = [{"prompt": text(prompt_len), "responses": [" " + text(response_len) for _ in range(k)],
             "ranking": rng.sample(range(k), k)} for _ in range(n_prompts)]
    write_jsonl(root / f"rankings_k{k}.jsonl", recs)
    embed = model.get_input_embeddings().weight.numel()
    return {"params": count_parameters(model), "non_embedding_params": count_parameters(model) - embed}






def _steady_step_s(starts: list[float]) -> float:
    durations = [b - a for a, b in zip(starts, starts[1:])][2:]  # the last start has no duration: it is left out
    return statistics.median(durations)


# ------------------------------------------------------------------------------------------------ the sides
def run_rlhfkit(p: dict) -> dict:
    """`rlhfkit rm train` on the rankings file (K = 2: preference pairs), timing each objective call."""
    import torch

    import rlhfkit.reward.train as reward  # run_rm_train looks the objective up here
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    starts: list[float] = []
    make_objective = reward.reward_objective

    def timed_objective(*args, **kwargs):
        objective = make_objective(*args, **kwargs)

        def timed(model, batch):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if not starts:  # model loaded and prepared, optimizer built (its state is allocated lazily)
                rss_at_start.append(_rss_mb())
            starts.append(time.perf_counter())
            peaks.append(_peak_rss_mb())
            return objective(model, batch)

        return timed

    rss_at_start: list[float] = []
    peaks: list[float] = []  # high-water RSS at each step's start: the last one covers every step but the last
    reward.reward_objective = timed_objective
    root = Path(p["root"])
    cfg = reward.RMConfig(
        data=DataConfig(train=str(root / f"rankings_k{p['k']}.jsonl"), eval_fraction=0.0, max_length=256,
                        max_prompt_length=128),
        model=ModelConfig(name=str(root / "model")), loss="bt", shared_prefix=p["shared_prefix"],
        train=TrainConfig(batch_size=p["prompts_per_step"], max_steps=p["steps"], log_every=10**6,
                          save_every=10**6, eval_every=10**6, threads=p["threads"], progress=False),
        optim=OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant"), out=str(root / f"rlhfkit-{time.time_ns()}"))
    summary = reward.run_rm_train(cfg)
    return {"step_s": _steady_step_s(starts[: p["steps"]]), "rss_before_train_mb": rss_at_start[0],
            "peak_rss_in_training_mb": peaks[p["steps"] - 1], "steps_run": summary["step"]}


def _trl_dataset(p: dict):
    """The same records as rlhfkit reads, tokenised by rlhfkit.data.encode_pair, expanded to all C(K,2) pairs."""
    from datasets import Dataset

    from rlhfkit.data import encode_pair, read_records

    tok = word_tokenizer()
    rows = []
    for rec in read_records(Path(p["root"]) / f"rankings_k{p['k']}.jsonl", "rankings"):
        ids = [encode_pair(tok, rec["prompt"], rec["responses"][i], 256, 128).input_ids for i in rec["ranking"]]
        rows += [{"chosen_ids": ids[i], "rejected_ids": ids[j]} for i, j in combinations(range(len(ids)), 2)]
    return Dataset.from_list(rows), tok


def run_trl(p: dict) -> dict:
    """TRL RewardTrainer on the expanded pairs; a callback stamps each step's start."""
    import torch
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    starts: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            starts.append(time.perf_counter())
            peaks.append(_peak_rss_mb())

    peaks: list[float] = []
    dataset, tok = _trl_dataset(p)
    pairs_per_step = p["prompts_per_step"] * p["k"] * (p["k"] - 1) // 2
    args = RewardConfig(
        output_dir=str(Path(p["root"]) / f"trl-{time.time_ns()}"), per_device_train_batch_size=pairs_per_step,
        max_steps=p["steps"], learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        bf16=False, gradient_checkpointing=False, disable_dropout=True, logging_steps=10**6, save_strategy="no",
        eval_strategy="no", report_to="none", dataloader_num_workers=0, seed=0, max_length=None,
        use_cpu=not torch.cuda.is_available())
    trainer = RewardTrainer(model=str(Path(p["root"]) / "model"), args=args, train_dataset=dataset,
                            processing_class=tok, callbacks=[StepTimer()])
    rss0 = _rss_mb()  # model loaded, before the optimizer exists
    trainer.train()
    return {"step_s": _steady_step_s(starts), "rss_before_train_mb": rss0,
            "peak_rss_in_training_mb": peaks[-1], "steps_run": trainer.state.global_step}


SIDES = {"rlhfkit": run_rlhfkit, "trl": run_trl}


def child(side: str, params_path: str, result_path: str) -> None:
    import torch

    p = json.loads(Path(params_path).read_text())
    torch.set_num_threads(p["threads"])
    out = SIDES[side](p)
    pairs_per_step = p["prompts_per_step"] * p["k"] * (p["k"] - 1) // 2
    out.update({"pairs_per_s": pairs_per_step / out["step_s"], "peak_rss_mb": _peak_rss_mb(),
                "threads": torch.get_num_threads()})
    out["train_rss_increase_mb"] = out["peak_rss_in_training_mb"] - out["rss_before_train_mb"]
    Path(result_path).write_text(json.dumps(out))


def run_side(side: str, params: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pp, rp = Path(tmp) / "p.json", Path(tmp) / "r.json"
        pp.write_text(json.dumps(params))
        env = {**os.environ, "OMP_NUM_THREADS": str(params["threads"]), "MKL_NUM_THREADS": str(params["threads"]),
               "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", side, "--params", str(pp), "--result", str(rp)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not rp.exists():
            raise SystemExit(f"{side} failed:\n" + "\n".join(proc.stderr.splitlines()[-30:]))
        return {**json.loads(rp.read_text()), "load1_before": load}


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pairs-per-step", type=int, default=8, help="pairs setting: B pairs per step")
    ap.add_argument("--k", type=int, default=4, help="rankings setting: responses per prompt")
    ap.add_argument("--rankings-per-step", type=int, default=2, help="rankings setting: R rankings per step")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--response-len", type=int, default=32)
    ap.add_argument("--no-shared-prefix", action="store_true",
                    help="rlhfkit runs one row per response (the ablation of rlhfkit.prefix)")
    ap.add_argument("--out", default=str(RESULTS / "bench_rm.json"), help="results JSON")
    args = ap.parse_args()
    settings = {"pairs": {"k": 2, "prompts_per_step": args.pairs_per_step},
                "rankings": {"k": args.k, "prompts_per_step": args.rankings_per_step}}
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        root = Path(tmp)
        for setting, s in settings.items():
            n_prompts = s["prompts_per_step"] * (args.steps + 2)
            sizes = make_assets(root, args.prompt_len, args.response_len, n_prompts, s["k"])
            params = {"root": str(root), "steps": args.steps, "threads": args.threads,
                      "shared_prefix": not args.no_shared_prefix, **s}
            for r in range(args.repeats):
                for side in SIDES:
                    res = run_side(side, params)
                    runs.setdefault((setting, side), []).append(res)
                    print(f"  {setting} repeat {r + 1} {side}: {res['pairs_per_s']:.1f} pairs/s, peak RSS "
                          f"{res['peak_rss_mb']:.0f} MiB (+{res['train_rss_increase_mb']:.0f} training), "
                          f"load {res['load1_before']:.2f}", file=sys.stderr, flush=True)
    for (setting, side), rs in runs.items():
        med = lambda key: statistics.median(x[key] for x in rs)  # noqa: E731
        pairs = settings[setting]["prompts_per_step"] * settings[setting]["k"] * (settings[setting]["k"] - 1) // 2
        # pairs/s from the median step time (robust to one disturbed repeat), not a median of rates
        rows.append({"setting": setting, "side": side, "pairs_per_s": pairs / med("step_s"), "step_s": med("step_s"),
                     "peak_rss_mb": med("peak_rss_mb"), "train_rss_increase_mb": med("train_rss_increase_mb"),
                     "load1": [min(x["load1_before"] for x in rs), max(x["load1_before"] for x in rs)]})
    for setting in settings:
        ours, trl = (next(r for r in rows if r["setting"] == setting and r["side"] == s) for s in ("rlhfkit", "trl"))
        ours["speedup_vs_trl"] = ours["pairs_per_s"] / trl["pairs_per_s"]
    _print(rows, args, settings)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
                                "settings": settings, "model": sizes, "rows": rows, "time": time.ctime(),
                                "runs": {f"{k[0]}/{k[1]}": v for k, v in runs.items()}}, indent=2))
    print(f"wrote {path}")


def _print(rows: list[dict], args, settings: dict) -> None:
    print(f"RM training, tiny trunk, prompt {args.prompt_len} + response {args.response_len} tokens, "
          f"{args.threads} thread(s), {args.steps} steps, median of {args.repeats}")
    print(f"{'setting':<9} {'side':<8} {'pairs/step':>10} {'pairs/s':>8} {'step s':>7} {'peak RSS MiB':>12} "
          f"{'train +MiB':>10} {'x TRL':>6}  load1")
    for r in rows:
        s = settings[r["setting"]]
        pairs = s["prompts_per_step"] * s["k"] * (s["k"] - 1) // 2
        speed = f"{r['speedup_vs_trl']:.2f}" if "speedup_vs_trl" in r else ""
        print(f"{r['setting']:<9} {r['side']:<8} {pairs:>10} {r['pairs_per_s']:>8.1f} {r['step_s']:>7.3f} "
              f"{r['peak_rss_mb']:>12.0f} {r['train_rss_increase_mb']:>10.0f} {speed:>6}  "
              f"{r['load1'][0]:.2f}-{r['load1'][1]:.2f}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        cp = argparse.ArgumentParser()
        cp.add_argument("--child", choices=sorted(SIDES))
        cp.add_argument("--params")
        cp.add_argument("--result")
        a = cp.parse_args()
        child(a.child, a.params, a.result)
    else:
        main()
