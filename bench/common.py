"""Shared harness for the benchmarks in bench/: isolated sides, a shared tiny model, timing, load, output.

How a benchmark uses it (see bench_sft.py):

    SIDES = {"rlhfkit": run_rlhfkit, "trl": run_trl}      # side(params: dict) -> dict of figures
    if __name__ == "__main__":
        if not common.child_main(SIDES):                  # this process is a child: run one side, exit
            main()                                        # parent: model, data, interleaved repeats, table

- Each side runs in its own subprocess (`run_side`), so its peak RSS (`ru_maxrss` of the child) and CUDA peak
  are that side's alone. The child also reports its RSS just before training (`mark_train_start`), so the
  training increment can be told apart from import overhead (TRL imports far more than rlhfkit).
- Both sides get the same thread count: OMP/MKL env + `torch.set_num_threads` in the child.
- `interleave` repeats the sides A B A B ... and records the 1-minute load average before each run; compare
  medians, never single runs (quiet repeats differ 15-20% on a shared 2-core machine).
- `StepClock` times optimizer steps start-to-start (data, forward, backward, clip, optimizer all included)
  and gives the median tokens/s over the steps after warmup.
- `tiny_model_dir` saves the tiny preset (BPE trained offline on the embedded corpus, or toy text) once per
  bench run, so both sides load identical weights from one folder.
- `roofline` measures fp32 torch.mm GFLOP/s in a child with the same threads, and every side measures it
  again right after its run (`roofline_gflops`: what the CPU gave that run); `model_flops_fraction` turns
  tokens/s into a fraction of it (6 x non-embedding params per token for forward + backward).
- `SHAPES` / `word_model_dir`: the model shapes the benchmarks take (`--shape tiny|large`) and a word-level
  tokenizer of exactly V entries (one word = one token, so lengths are exact and identical on both sides).
- `Variant`: a row run from one side with extra params / environment (an ablation, e.g. RLHFKIT_LM_HEAD=plain).
- `target_rows` turns measured ratios into a "target met / not met" table; nothing is asserted.
- `write_result` writes bench/results/<name>.json (gitignored); `print_table` prints rows as text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
Side = Callable[[dict], dict]


class BenchError(RuntimeError):
    """A side failed; the message carries the tail of its stderr."""


@dataclass(frozen=True)
class RunArgs:
    """The options every training benchmark shares (each script's `Args` adds its own)."""

    shape: Literal["tiny", "large"] = "large"
    """Model shape (SHAPES): large = hidden 576, 4 layers, vocabulary 49,152; tiny = the tiny preset."""
    threads: int | None = None
    """torch threads for every side; default: the shape's (large 2, tiny 1)."""
    repeats: int = 2
    """Runs per row, interleaved A B A B; figures are medians over runs."""
    steps: int = 6
    """Optimizer steps per run."""
    warmup: int = 2
    """Steps left out of the steady-state median."""


# ------------------------------------------------------------------------------------------ machine and load
def load_average() -> dict[str, float]:
    """1/5/15-minute load averages: how busy the (shared) CPU was around a figure."""
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2)}


def machine_info() -> dict[str, Any]:
    """CPU, core count and library versions, written with every result."""
    import torch

    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0)
                            if torch.cuda.is_available() else None}
    for pkg in ("transformers", "accelerate", "trl"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def child_env(threads: int) -> dict[str, str]:
    """Environment of a side: fixed thread count, passive OpenMP waits (CI_NOTES), strictly offline."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "PYTHONWARNINGS": "ignore"})
    return env


# ------------------------------------------------------------------------------------------------ memory
def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    import psutil  # a dependency of accelerate

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """High-water RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


_TRAIN_START: dict[str, float] = {}


def mark_train_start() -> None:
    """Call in a side right before its training loop: records RSS there (and resets the CUDA peak)."""
    import torch

    _TRAIN_START["rss_mb"] = rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------------------------- timing
class StepClock:
    """Start-to-start wall time of optimizer steps and the tokens each step processed.

    Call `tick(tokens)` at the start of every step (with that step's token count). Step k's duration is
    t[k+1] - t[k], so it includes everything the loop does between steps; the last tick has no duration.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.tokens: list[int] = []
        self.items: list[int] = []

    def tick(self, tokens: int, items: int = 0) -> None:
        """tokens: real (non-padding) tokens the step runs; items: sequences or pairs it trains on (0: not counted).
        The first tick also records the RSS at the start of training (`mark_train_start`): model loaded,
        optimizer built, its state not yet allocated -- the same point on every side."""
        if not self.times:
            mark_train_start()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        self.tokens.append(int(tokens))
        self.items.append(int(items))

    def steady(self, warmup: int) -> dict[str, float]:
        """Median tokens/s and step time over steps >= warmup; the pooled rate over the same steps; and tokens
        per CPU-second of this process (with 1 thread, much less sensitive to other processes than wall time)."""
        durations = [b - a for a, b in zip(self.times, self.times[1:])][warmup:]
        cpu = [b - a for a, b in zip(self.cpu_times, self.cpu_times[1:])][warmup:]
        tokens = self.tokens[warmup : warmup + len(durations)]
        if not durations:
            raise BenchError(f"no steady steps: {len(self.times)} steps timed, warmup {warmup}")
        rates = [n / d for n, d in zip(tokens, durations)]
        out = {"tokens_per_s": statistics.median(rates), "step_s": statistics.median(durations),
               "tokens_per_s_pooled": sum(tokens) / sum(durations), "tokens_per_cpu_s": sum(tokens) / sum(cpu),
               "steady_steps": len(durations), "tokens_per_step": statistics.mean(tokens)}
        items = self.items[warmup : warmup + len(durations)]
        if any(items):
            out["items_per_s"] = statistics.median(n / d for n, d in zip(items, durations))
            out["items_per_cpu_s"] = sum(items) / sum(cpu)
        return out


def real_tokens(batch: Any) -> int:
    """Non-padding tokens of a batch: rlhfkit's TokenBatch / PrefixBatch (`attention_mask`, 1 on real columns) or
    a Trainer's input dict (`attention_mask`, or `position_ids` when padding-free flattens the batch)."""
    get = batch.get if isinstance(batch, dict) else lambda key: getattr(batch, key, None)
    mask = get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    return int(get("position_ids").numel())


def time_trainer_steps(trainer: Any, clock: StepClock, items_per_step: int) -> None:
    """Tick `clock` at the start of every `trainer.training_step` (a transformers Trainer, e.g. TRL's) with the
    real tokens of its inputs, so TRL's steps are timed like rlhfkit's objective calls (start to start)."""
    inner = trainer.training_step

    def timed_step(model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
        clock.tick(real_tokens(inputs), items_per_step)
        return inner(model, inputs, *args, **kwargs)

    trainer.training_step = timed_step


# ------------------------------------------------------------------------------------------- subprocesses
def run_side(script: str | Path, side: str, params: dict, threads: int, timeout: float = 1800,
             env: dict[str, str] | None = None) -> dict:
    """Run `side` of `script` in a fresh Python process (child_env plus `env`); returns its figures plus memory,
    threads and load."""
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-") as tmp:
        params_path, result_path = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_path.write_text(json.dumps({**params, "threads": threads}))
        before = load_average()
        cmd = [sys.executable, str(script), "--child", side, "--params", str(params_path), "--result",
               str(result_path)]
        proc = subprocess.run(cmd, env={**child_env(threads), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
            raise BenchError(f"{Path(script).name} side {side!r} failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    return {"side": side, **result, "load1_before": before["load1"]}


def child_main(sides: dict[str, Side], argv: Sequence[str] | None = None) -> bool:
    """If this process was started by `run_side`, run the named side, write its result and return True."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" not in argv:
        return False
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, choices=sorted(sides))
    parser.add_argument("--params", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    params = json.loads(Path(args.params).read_text())
    import torch

    torch.set_num_threads(int(params["threads"]))
    figures = sides[args.child](params)
    peak = peak_rss_mb()
    if args.child != "roofline":  # the CPU this run actually had: normalises tokens/s on a shared machine
        figures["roofline_gflops"] = _roofline_side({"n": 1024, "reps": 10})["gflops"]
    figures.update({"threads": torch.get_num_threads(), "peak_rss_mb": round(peak, 1), **load_average()})
    if "rss_mb" in _TRAIN_START:
        figures["rss_at_train_start_mb"] = round(_TRAIN_START["rss_mb"], 1)
        figures["train_rss_increase_mb"] = round(peak - _TRAIN_START["rss_mb"], 1)
    if torch.cuda.is_available():
        figures["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    Path(args.result).write_text(json.dumps(figures))
    return True


@dataclass(frozen=True)
class Variant:
    """One row of a benchmark: side `side` of the script run with `params` overriding the shared ones and `env`
    added to its environment (an ablation, e.g. env RLHFKIT_LM_HEAD=plain or params shared_prefix=False)."""

    label: str
    side: str
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


def interleave(script: str | Path, sides: Sequence[str | Variant], params: dict, repeats: int, threads: int,
               log: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
    """Run the sides (names, or Variants) A B A B ... `repeats` times each; returns every run's figures per side
    name or Variant label. Wall time of each run is recorded as `run_seconds`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    variants = [s if isinstance(s, Variant) else Variant(s, s) for s in sides]
    runs: dict[str, list[dict]] = {v.label: [] for v in variants}
    for r in range(repeats):
        for v in variants:
            t0 = time.perf_counter()
            result = run_side(script, v.side, {**params, **v.params}, threads, env=v.env)
            result["run_seconds"] = round(time.perf_counter() - t0, 1)
            runs[v.label].append(result)
            rate = (f"{result['items_per_s']:.2f} items/s, " if "items_per_s" in result else "") + \
                f"{result.get('tokens_per_s', float('nan')):.0f} tokens/s"
            log(f"  repeat {r + 1}/{repeats} {v.label}: {rate}, peak RSS {result['peak_rss_mb']:.0f} MiB, "
                f"load {result['load1_before']:.2f}, {result['run_seconds']:.0f} s")
    return runs


def paired_ratio(runs: dict[str, list[dict]], a: str, b: str, key: str = "tokens_per_s") -> float | None:
    """Median over repeats of a[r][key] / b[r][key]: runs next to each other saw similar load, so pairing them
    cancels slow drifts in how busy the machine is."""
    ratios = [x[key] / y[key] for x, y in zip(runs[a], runs[b]) if x.get(key) and y.get(key)]
    return statistics.median(ratios) if ratios else None


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], keys: Sequence[str]) -> dict[str, Any]:
    """Median of each key over repeats, the spread of tokens/s, and the load range the repeats saw."""
    out: dict[str, Any] = {k: median_of(runs, k) for k in keys}
    rates = [r["tokens_per_s"] for r in runs if "tokens_per_s" in r]
    if rates:
        out["tokens_per_s_min"], out["tokens_per_s_max"] = min(rates), max(rates)
    loads = [r["load1_before"] for r in runs]
    out["load1_range"] = [min(loads), max(loads)]
    out["repeats"] = len(runs)
    return out


# ---------------------------------------------------------------------------------------- model and data
TOY_WORDS = ("the film is a warm funny and sharp story about a family that learns to laugh again while the "
             "plot drags and the acting feels flat but the music lifts every scene").split()


def toy_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic review-like sentences (the offline fallback when the embedded corpus is missing)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(n)]


def corpus_texts(max_texts: int | None = None, reviews_only: bool = False) -> tuple[list[str], str]:
    """Rotten Tomatoes snippets (deduplicated; reviews_only drops the ~110-word plot synopses, as the corpus's
    SFT file does) from the embedded corpus, or toy text; returns (texts, source)."""
    try:
        from rlhfkit.corpus import REVIEW_CATEGORIES, dedupe, read_rotten_tomatoes

        rows, _ = dedupe(read_rotten_tomatoes())
        rows = [r for r in rows if r["category"] in REVIEW_CATEGORIES] if reviews_only else rows
        return [r["text"] for r in rows][:max_texts], "rotten_tomatoes"
    except Exception as err:  # the data package is optional; say what was used instead
        print(f"embedded corpus unavailable ({err}); using toy text", file=sys.stderr)
        return toy_texts(max_texts or 4000), "toy"


def tiny_model_dir(out_dir: str | Path, texts: list[str], vocab_size: int = 4096, seed: int = 0,
                   max_length: int = 128) -> Path:
    """Save rlhfkit's `tiny` preset (random init, seeded) with a BPE trained on `texts` to out_dir/model."""
    from rlhfkit.config import TinyArch
    from rlhfkit.models import build_tiny, save_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, vocab_size, model_max_length=max_length)
    model = build_tiny(tokenizer, TinyArch(), seed)
    return save_model(model, tokenizer, Path(out_dir) / "model")


def non_embedding_params(model: Any) -> int:
    """Parameters outside the token embedding and LM head (tied or not): the N of 6N FLOPs per token."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def model_flops_fraction(tokens_per_s: float, n_params: int, roofline_gflops: float, factor: int = 6) -> float:
    """Achieved share of the matmul roofline: factor * N * tokens/s (6N = forward 2N + backward 4N)."""
    return factor * n_params * tokens_per_s / (roofline_gflops * 1e9)


# ------------------------------------------------------------------------------------ shapes and word data
SHAPES: dict[str, dict[str, Any]] = {
    # rlhfkit's tiny preset with a 4,096-word vocabulary: quick, and the LM head is a small share of the work.
    "tiny": {"arch": {"hidden_size": 192, "num_layers": 4, "num_heads": 4, "intermediate_size": 512,
                      "max_positions": 512}, "vocab": 4096, "threads": 1},
    # SmolLM2-135M's width, MLP and vocabulary with 4 layers: the LM head (V x d = 28.3M) is ~2x the blocks'
    # parameters, so logits (B, T, 49152) dominate memory. 9 query heads; TinyArch gives key/value heads the same
    # number (SmolLM2 has 3), which adds 2 x 4 x 576 x 384 parameters, ~10% of the blocks.
    "large": {"arch": {"hidden_size": 576, "num_layers": 4, "num_heads": 9, "intermediate_size": 1536,
                       "max_positions": 512}, "vocab": 49152, "threads": 2},
}
SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|bos|>", "<unk>")


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer of exactly `vocab_size` entries (4 special tokens, then words w0, w1, ...): one word
    is one token and no special token is added by itself, so every side sees sequences of exactly the lengths
    asked for."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    tok_obj = Tokenizer(models.WordLevel({w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}, unk_token="<unk>"))
    tok_obj.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, pad_token="<|pad|>", eos_token="<|endoftext|>",
                                   bos_token="<|bos|>", unk_token="<unk>", model_max_length=1024)


def word_model_dir(out_dir: str | Path, shape: str, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Save a randomly initialised (seeded) Llama-style model of SHAPES[shape] with its word tokenizer to
    out_dir/model; returns the folder and the parameter counts (all, non-embedding; embeddings are tied)."""
    from rlhfkit.config import TinyArch
    from rlhfkit.models import build_tiny, save_model

    spec = SHAPES[shape]
    tokenizer = word_tokenizer(spec["vocab"])
    model = build_tiny(tokenizer, TinyArch(**spec["arch"]), seed)
    path = save_model(model, tokenizer, Path(out_dir) / "model")
    return Path(path), {"params": sum(p.numel() for p in model.parameters()),
                        "non_embedding_params": non_embedding_params(model)}


def word_text(rng: Any, n: int, vocab_size: int) -> str:
    """n random words of the word tokenizer (n tokens exactly)."""
    return " ".join(f"w{rng.randrange(vocab_size - len(SPECIAL_TOKENS))}" for _ in range(n))


def length_range(spec: str) -> tuple[int, int]:
    """'64:128' -> (64, 128) (inclusive, drawn uniformly); '96' -> (96, 96)."""
    lo, _, hi = spec.partition(":")
    return int(lo), int(hi or lo)


# ------------------------------------------------------------------------------------------------ targets
def target_rows(checks: Sequence[tuple[str, float | None, float, str]]) -> list[dict]:
    """(what, measured rlhfkit / TRL ratio, target, '>=' or '<=') -> rows with a 'target met / not met' column.
    Printed with the figures, never asserted: a benchmark on a shared machine is evidence, not a test."""
    rows = []
    for what, value, target, op in checks:
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        rows.append({"target": what, "rlhfkit / TRL": value, "wanted": f"{op} {target:g}",
                     "result": "n/a" if met is None else "target met" if met else "not met"})
    return rows


# ----------------------------------------------------------------------------------------------- roofline
def _roofline_side(params: dict) -> dict:
    """fp32 torch.mm GFLOP/s: median of timed (n x n) @ (n x n) products after a warmup."""
    import torch

    n, reps = int(params.get("n", 1024)), int(params.get("reps", 20))
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"gflops": statistics.median(rates), "gflops_max": max(rates), "n": n}


def roofline(threads: int, n: int = 1024, reps: int = 20) -> dict:
    """The matmul roofline measured in a fresh child with `threads` threads (same env as the sides)."""
    return run_side(Path(__file__), "roofline", {"n": n, "reps": reps}, threads)


# ------------------------------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, list):
        return "-".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def print_result(result: dict, columns: Sequence[str], path: Path) -> None:
    """A training benchmark's ending: its rows, the rlhfkit / TRL ratios and target table (when TRL ran), and
    where the result was written."""
    print_table(result["rows"], columns)
    if result["ratio_rlhfkit_over_trl"]:
        print("rlhfkit / TRL: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratio_rlhfkit_over_trl"].items()
                                          if v is not None))
        print_table(result["targets"], ("target", "rlhfkit / TRL", "wanted", "result"))
    print(f"written to {path}")


def print_table(rows: list[dict], columns: Sequence[str], file: Any = None) -> None:
    """Rows as a fixed-width text table with the given columns (missing values left blank)."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    print(line, file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))), file=file)


def write_result(name: str, data: dict) -> Path:
    """bench/results/<name>.json with the command, machine and load added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"name": name, "command": " ".join([Path(sys.executable).name] + sys.argv),
               "time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(), "load_at_end": load_average(),
               **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


if __name__ == "__main__":
    if not child_main({"roofline": _roofline_side}):
        print(json.dumps(roofline(threads=int(sys.argv[1]) if len(sys.argv) > 1 else 1), indent=2))
