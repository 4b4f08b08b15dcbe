"""The training loop: one step runner (`StepLoop`) that every stage drives, and `fit(objective, ...)` on top.

`StepLoop` owns what is the same for every stage: the progress bar, the optional time limit, atomic resumable
checkpoints (with a stage's extra state, e.g. PPO's KL controller), snapshots and exact resume; a stage gives
it what one optimizer step does. `finish_stage` saves the final model and summary.json the same way for all.

`fit` runs every offline objective (SFT, pretraining, DPO and its baselines, the reward model) and knows nothing
about the algorithm: an objective maps (model, batch) to (scalar loss, metrics). On top of `accelerate` (DDP /
FSDP / DeepSpeed by `accelerate launch`; plain CPU or one GPU otherwise) it does gradient accumulation,
clipping, warmup then a cosine / linear / constant schedule, periodic evaluation and metrics, and stops on a
non-finite loss keeping the last good checkpoint. PPO drives `StepLoop` with its own step (`rlhfkit.ppo`).

Data order is a pure function of (seed, epoch): optimizer step s of epoch e reads rows [s*G, (s+1)*G) of a
seeded permutation, G = batch_size * grad_accum * processes, and process r takes its contiguous share. So a
resumed run reads exactly what an uninterrupted one would, and 2 processes see the same global batch as 1.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import OptimConfig, TrainConfig
from rlhfkit.errors import TrainingDiverged
from rlhfkit.protocols import Objective
from rlhfkit.tracking import Run, say



@dataclass
class FitResult:
    step: int
    status: str  # "done" | "time_limit"
    planned_steps: int = 0  # the steps the run was to reach (step < planned_steps when stopped on time)
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    snapshot: Path | None = None  # the snapshot saved at `step` by this call (None if the last step saved none)


def make_accelerator(cfg: TrainConfig) -> Any:
    """An Accelerator on the GPU when there is one, else on CPU (gloo when launched with several processes)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    return accelerator


def lr_lambda(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at a step: linear warmup, then cosine / linear / constant decay."""

    def f(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / (optim.warmup_steps + 1)
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay

    return f


def make_optimizer(model: Any, optim: OptimConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW over trainable parameters (no decay on biases and norms) and its LambdaLR schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters (CPU and CUDA); ~5% of a tiny-model DPO step on CPU. Other devices
    # (mps, xla, ...) get the default implementation.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=fused or None)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))


def global_batch(cfg: TrainConfig, processes: int) -> int:
    return cfg.batch_size * cfg.grad_accum * processes


def total_steps(cfg: TrainConfig, n_examples: int, processes: int) -> int:
    return cfg.max_steps or cfg.epochs * steps_per_epoch(cfg, n_examples, processes)


def steps_per_epoch(cfg: TrainConfig, n_examples: int, processes: int) -> int:
    return max(1, n_examples // global_batch(cfg, processes))


def step_indices(cfg: TrainConfig, n_examples: int, step: int, processes: int, rank: int) -> list[list[int]]:
    """This process's micro-batches (lists of example indices) for optimizer step `step`."""
    G = global_batch(cfg, processes)
    per_epoch = steps_per_epoch(cfg, n_examples, processes)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    rows = [int(perm[(k * G + i) % n_examples]) for i in range(G)]
    mine = rows[rank * cfg.batch_size * cfg.grad_accum : (rank + 1) * cfg.batch_size * cfg.grad_accum]
    return [mine[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(cfg.grad_accum)]


# ------------------------------------------------------------------------------------------- checkpoints
def dir_step(path: Path) -> int:
    """The optimizer step a `step-NNNNNNN` checkpoint or snapshot directory was saved at."""
    return int(path.name.split("-")[1])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory counts once its loop_state.json is in place)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [d for d in root.iterdir() if d.name.startswith("step-") and (d / "loop_state.json").exists()]
    return sorted(done, key=dir_step)


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, extra: dict | None = None, keep: int = 2) -> Path:
    """Model, optimizer, scheduler and RNG states (accelerate.save_state) + loop state, written to a temp
    directory and renamed into place, so a kill at any moment leaves the previous checkpoint intact."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "loop_state.json").write_text(json.dumps({"step": step, "extra": extra or {}}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_snapshot(accelerator: Any, model: Any, tokenizer: Any, run_dir: Path, step: int) -> Path:
    """A loadable model (save_pretrained, LoRA merged) at <run_dir>/snapshots/step-N, for trajectory evaluation."""
    from rlhfkit.models import save_model

    path = Path(run_dir) / "snapshots" / f"step-{step:07d}"
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), tokenizer, path)
    accelerator.wait_for_everyone()
    return path


def snapshot_interval(cfg: TrainConfig, steps: int) -> int | None:
    """Steps between snapshots: from cfg.snapshots (a count) when set, else cfg.snapshot_every (None: none)."""
    if cfg.snapshots:
        return max(1, math.ceil(steps / cfg.snapshots))
    return cfg.snapshot_every


def save_final_model(model: Any, tokenizer: Any, run_dir: Path, snapshot: Path | None = None,
                     merge_lora: bool = True) -> Path:
    """The run's result at <run_dir>/model (call on the main process). `snapshot`: a snapshot this run saved of
    these very weights (its last step); when the final save is merged like snapshots are, the snapshot's files
    are hard-linked rather than written a second time (SmolLM2-135M is 0.5 GB per copy)."""
    from rlhfkit.models import is_peft, link_model, save_model

    out = Path(run_dir) / "model"
    if snapshot is not None and Path(snapshot).is_dir() and (merge_lora or not is_peft(model)):
        return link_model(snapshot, out)
    return save_model(model, tokenizer, out, merge_lora=merge_lora)


def snapshot_dirs(run_dir: Path) -> list[Path]:
    """Saved snapshots of a run, in step order."""
    root = Path(run_dir) / "snapshots"
    found = [d for d in root.glob("step-*") if (d / "config.json").exists()] if root.exists() else []
    return sorted(found, key=dir_step)


def drop_snapshots_after(run_dir: Path, step: int) -> list[Path]:
    """Delete the snapshots of steps after `step` (a resumed run saves them again, from its own weights);
    returns those deleted. Call on the main process."""
    later = [d for d in snapshot_dirs(run_dir) if dir_step(d) > step]
    for d in later:
        shutil.rmtree(d, ignore_errors=True)
    return later


def load_latest_checkpoint(accelerator: Any, run_dir: Path) -> tuple[int, dict] | None:
    """Restore the newest complete checkpoint into the prepared objects; returns (step, extra) or None."""
    dirs = checkpoint_dirs(run_dir)
    if not dirs:
        return None
    accelerator.load_state(str(dirs[-1]))
    state = json.loads((dirs[-1] / "loop_state.json").read_text())
    return state["step"], state["extra"]


# ----------------------------------------------------------------------------------------------- step runner
@dataclass
class StepLoop:
    """The outer loop every stage shares, offline objectives (`fit`) and PPO alike: progress bar, the optional
    time limit, checkpoints (with a stage's extra state), snapshots and exact resume. A stage supplies what one
    optimizer step does; the runner decides when to save.

    model: what snapshots save (the runner unwraps it); postfix: progress-bar fields from a step's metrics;
    extra: state saved with every checkpoint and returned by `resume` (e.g. PPO's KL controller).
    """

    cfg: TrainConfig
    run: Run
    accelerator: Any
    total: int
    model: Any
    tokenizer: Any = None
    postfix: Callable[[dict[str, float]], dict[str, str]] = lambda metrics: {}
    extra: Callable[[], dict] | None = None

    def resume(self) -> tuple[int, dict]:
        """(first step to run, the extra state of the checkpoint it resumes from): (0, {}) for a fresh run, and
        for a resume with no complete checkpoint to resume from (the run starts over, and says so when the
        directory held one). Logged rows, TensorBoard events and snapshots after that step are dropped, since
        the resumed run makes them again: the directory never mixes two runs' steps."""
        restored = load_latest_checkpoint(self.accelerator, self.run.dir) if self.cfg.resume else None
        start, extra = restored if restored is not None else (0, {})
        if self.accelerator.is_main_process:
            if self.cfg.resume and restored is None and self.run.existing:
                say(f"{self.run.dir}: no checkpoint to resume from; training from step 0 and replacing what it "
                    f"holds ({', '.join(self.run.existing)})")
            drop_snapshots_after(self.run.dir, start)
        self.run.resume_at(start)
        return start, extra

    def run_steps(self, start: int, step: Callable[[int], dict[str, float]],
                  after_step: Callable[[int, dict[str, float], bool], None] | None = None) -> LoopResult:
        """Run optimizer steps start..total-1. `step(s)` does step s and returns its metrics; `after_step(done,
        metrics, last)` logs or evaluates before the step's snapshot and checkpoint are written."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        self.run.planned_steps = self.total
        bar = tqdm(total=self.total, initial=start, disable=not (cfg.progress and acc.is_main_process),
                   desc=self.run.dir.name, dynamic_ncols=True)
        result, t0, every = LoopResult(start, planned_steps=self.total), time.time(), snapshot_interval(cfg, self.total)
        try:  # closed on an error too: its line ends, and the error message starts a line of its own
            for s in range(start, self.total):
                metrics = step(s)
                result.step, result.metrics = s + 1, metrics
                bar.update(1)
                bar.set_postfix(self.postfix(metrics))
                out_of_time = cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes
                last = result.step == self.total or out_of_time
                if after_step is not None:
                    after_step(result.step, metrics, last)
                due = every is not None and (result.step % every == 0 or last)
                result.snapshot = (save_snapshot(acc, self.model, self.tokenizer, self.run.dir, result.step) if due
                                   else None)
                if result.step % cfg.save_every == 0 or last:
                    save_checkpoint(acc, self.run.dir, result.step, self.extra() if self.extra else None,
                                    keep=cfg.keep_checkpoints)
                if out_of_time:
                    result.status = "time_limit"
                    break
        finally:
            bar.close()
        result.seconds = time.time() - t0
        return result


@dataclass
class LoopResult:
    step: int
    status: str = "done"  # "done" | "time_limit"
    planned_steps: int = 0  # the steps the run was to reach (step < planned_steps when stopped on time)
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's
    seconds: float = 0.0
    snapshot: Path | None = None  # the snapshot saved at `step` by this call (None if the last step saved none)


def finish_stage(accelerator: Any, model: Any, tokenizer: Any, run: Run, summary: dict[str, Any],
                 snapshot: Path | None = None, merge_lora: bool = True) -> dict[str, Any]:
    """Every training stage ends the same way: the model saved to <run>/model (a final snapshot's files
    hard-linked, see `save_final_model`) and summary.json written by the main process, then the run closed.
    summary.json also gets the steps the run was to reach (`planned_steps`) next to the stage's step and status;
    a stage stopped by its time limit says so."""
    summary["model"] = str(run.dir / "model")
    if run.planned_steps is not None:
        summary.setdefault("planned_steps", run.planned_steps)
    if summary.get("status") == "time_limit" and accelerator.is_main_process:
        say(f"{run.dir}: stopped by its time limit at step {summary.get('step')} of "
            f"{summary.get('planned_steps', '?')}; the saved model is that step's")
    if accelerator.is_main_process:
        save_final_model(accelerator.unwrap_model(model), tokenizer, run.dir, snapshot, merge_lora)
        run.write_json("summary.json", summary)
    run.close()
    return summary


# ---------------------------------------------------------------------------------------------------- fit
def _num_tokens(batch: Any) -> int:
    mask = getattr(batch, "attention_mask", None)
    return int(mask.sum()) if mask is not None else 0


@torch.no_grad()
def evaluate_objective(objective: Objective, model: Any, examples: Sequence, collate: Callable, batch_size: int,
                       device: Any) -> dict[str, float]:
    """Mean of the objective's loss and metrics over held-out examples (dropout off), as `eval/<name>`."""
    from rlhfkit.logprobs import eval_mode

    sums: dict[str, float] = {}
    n = 0
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            chunk = list(examples[i : i + batch_size])
            loss, metrics = objective(model, collate(chunk).to(device))
            for k, v in {"loss": float(loss), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
            n += len(chunk)
    return {f"eval/{k}": v / max(n, 1) for k, v in sums.items()}


def _check_finite(accelerator: Any, loss: torch.Tensor, step: int, run_dir: Path) -> None:
    bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if float(bad) > 0:
        last = checkpoint_dirs(run_dir)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
        raise TrainingDiverged(
            f"non-finite loss at optimizer step {step + 1}; stopped, {kept}. Lower the learning rate or check "
            "the data, then rerun with --train.resume to continue from that checkpoint (or into another --out to "
            "start over)"
        )


@dataclass
class FitState:
    """What `fit`'s optimizer steps share: the prepared model and optimizer, the data, and running counts."""

    objective: Objective
    model: Any
    optimizer: Any
    scheduler: Any
    train: Sequence
    collate: Callable[[list], Any]
    optim: OptimConfig
    loop: StepLoop  # its cfg, accelerator and run are the step's
    tokens: int = 0
    window: list[dict[str, float]] = field(default_factory=list)


def _fit_step(st: FitState, step: int) -> dict[str, float]:
    """One optimizer step: gradient accumulation over this process's micro-batches, clipping, the update."""
    acc = st.loop.accelerator
    micro = step_indices(st.loop.cfg, len(st.train), step, acc.num_processes, acc.process_index)
    metrics_sum: dict[str, float] = {}
    for i, idx in enumerate(micro):
        batch = st.collate([st.train[j] for j in idx]).to(acc.device)
        st.tokens += _num_tokens(batch) * acc.num_processes
        sync = acc.no_sync(st.model) if i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            loss, metrics = st.objective(st.model, batch)
            _check_finite(acc, loss, step, st.loop.run.dir)
            acc.backward(loss / len(micro))
        for k, v in {"loss": float(loss.detach()), **metrics}.items():
            metrics_sum[k] = metrics_sum.get(k, 0.0) + float(v) / len(micro)
    metrics_sum["grad_norm"] = _clip(acc, st.model, st.optim)
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    return metrics_sum


def fit(
    objective: Objective,
    model: Any,
    train: Sequence,
    collate: Callable[[list], Any],
    cfg: TrainConfig,
    optim: OptimConfig,
    run: Run,
    accelerator: Any = None,
    eval_examples: Sequence | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    tokenizer: Any = None,
) -> FitResult:
    """Train `model` on `train` by minimising `objective`; see the module docstring for the guarantees.

    collate: list of examples -> a batch with `.to(device)`. evaluate: optional extra evaluation of the
    (unwrapped) model, e.g. sampled KL, merged into the eval metrics. tokenizer: saved with snapshots.
    """
    accelerator = accelerator or make_accelerator(cfg)
    steps = total_steps(cfg, len(train), accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, optim, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    loop = StepLoop(cfg, run, accelerator, steps, model, tokenizer,
                    postfix=lambda m: {"loss": f"{m['loss']:.4f}"})
    start = loop.resume()[0]
    st = FitState(objective, model, optimizer, scheduler, train, collate, optim, loop)
    result = FitResult(step=start, status="done", planned_steps=steps)
    t0 = time.time()

    def after_step(done: int, metrics: dict[str, float], last: bool) -> None:
        grad_norm = metrics.pop("grad_norm")
        st.window.append(metrics)
        result.last_metrics = {f"train/{k}": v for k, v in metrics.items()}
        if done % cfg.log_every == 0 or last:
            avg = {f"train/{k}": sum(w[k] for w in st.window) / len(st.window) for k in st.window[0]}
            run.log(done, {**avg, "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                           "perf/tokens_per_s": st.tokens / max(time.time() - t0, 1e-9)})
            st.window = []
        if eval_examples is not None and (done % cfg.eval_every == 0 or last):
            result.eval_metrics = _eval(objective, model, eval_examples, collate, cfg, accelerator, evaluate)
            run.log(done, result.eval_metrics)

    model.train()
    ran = loop.run_steps(start, lambda s: _fit_step(st, s), after_step)
    result.step, result.status, result.snapshot, result.seconds = ran.step, ran.status, ran.snapshot, ran.seconds
    result.tokens_per_second = st.tokens / max(ran.seconds, 1e-9)
    return result


def _eval(objective, model, eval_examples, collate, cfg, accelerator, evaluate) -> dict[str, float]:
    inner = accelerator.unwrap_model(model)
    metrics = evaluate_objective(objective, inner, eval_examples, collate, cfg.batch_size, accelerator.device)
    if evaluate is not None:
        metrics.update(evaluate(inner))
    return metrics


def _clip(accelerator: Any, model: Any, optim: OptimConfig) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.max_grad_norm is None:
        norms = [p.grad.detach().norm() for p in params if p.grad is not None]
        return float(torch.stack(norms).norm()) if norms else 0.0
    return float(accelerator.clip_grad_norm_(params, optim.max_grad_norm))
