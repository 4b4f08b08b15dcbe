"""Run directories: the resolved config, metrics.jsonl, TensorBoard scalars and progress output.

Layout of a run directory:
    config.yaml        the resolved config (defaults + YAML + command line)
    metrics.jsonl      one JSON object per logged step: {"step": int, "time": float, "<name>": float, ...}
    tb/                TensorBoard event files (same scalars)
    checkpoints/       resumable checkpoints (see rlhfkit.loop)
    snapshots/         loadable models at chosen steps (see rlhfkit.loop)
    model/             the final model, loadable with AutoModel*.from_pretrained
    summary.json       the stage's summary, written when it ends

A directory that already holds a run (any of the above but config.yaml) is continued only when asked
(`--train.resume`); otherwise `Run` refuses it, so two runs are never silently mixed in one directory. An empty
or missing directory starts a fresh run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rlhfkit import config as config_lib
from rlhfkit.errors import RlhfkitError

RUN_ARTIFACTS = ("checkpoints", "metrics.jsonl", "summary.json", "model", "snapshots", "tb")
"""What a run leaves in its directory once it has trained (config.yaml alone is not a run: nothing was logged)."""


def run_artifacts(out_dir: str | Path) -> list[str]:
    """The names in RUN_ARTIFACTS present in `out_dir`, in that order ([] for a missing or empty directory)."""
    path = Path(out_dir)
    return [name for name in RUN_ARTIFACTS if (path / name).exists()]


def refusal(out_dir: str | Path, found: list[str], resume: bool) -> str | None:
    """The one line that refuses a directory holding `found` (run_artifacts) when not resuming; None: go on."""
    if not found or resume:
        return None
    return (f"{out_dir} already holds a run ({', '.join(found)}); pass --train.resume to continue it, "
            "or choose another --out")


def check_run_dir(out_dir: str | Path, resume: bool) -> list[str]:
    """Refuse (RlhfkitError) a directory that already holds a run unless `resume`, or one that cannot be written
    (a file in its place or above it, no permission); returns what it holds. Read-only, so a stage may call it
    before loading anything (`Run` calls it again when opened)."""
    from rlhfkit.data.files import check_output

    check_output(out_dir, directory=True)
    found = run_artifacts(out_dir)
    message = refusal(out_dir, found, resume)
    if message is not None:
        raise RlhfkitError(message)
    return found


def resume_requested(cfg: Any) -> bool:
    """`cfg.train.resume` of a stage config (or `cfg.resume` of a TrainConfig); False when it has neither."""
    return bool(getattr(getattr(cfg, "train", cfg), "resume", False))


def from_main(value: Any) -> Any:
    """`value` as the main process (rank 0) has it, on every process of a distributed run (unchanged otherwise),
    so that a decision one process takes is every process's."""
    dist = sys.modules.get("torch.distributed")  # no torch imported: no distributed run
    if dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Run:
    """A run directory that metrics are logged to. Only the main process checks, creates and writes it.

    A directory that already holds a run is refused (`check_run_dir`) unless `resume` (default: the config's
    `train.resume`); every process of a distributed run raises the same error. `existing` lists what the
    directory held when opened; `planned_steps` is set by the step loop (`rlhfkit.loop.StepLoop`).
    """

    def __init__(self, out_dir: str | Path, cfg: Any = None, is_main: bool = True, tensorboard: bool = True,
                 resume: bool | None = None):
        self.dir = Path(out_dir)
        self.is_main = is_main
        self._tb = None
        self._tensorboard = tensorboard
        self._purge_step: int | None = None
        self.planned_steps: int | None = None
        self.start = time.time()
        resume = resume_requested(cfg) if resume is None else resume
        found = run_artifacts(self.dir) if is_main else []
        self.existing, refused = from_main((found, refusal(self.dir, found, resume)))  # every process agrees
        if refused is not None:
            raise RlhfkitError(refused)
        if is_main:
            from rlhfkit.data.files import ensure_dir

            ensure_dir(self.dir)
            if cfg is not None:
                config_lib.save(cfg, self.dir / "config.yaml")

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one row to metrics.jsonl and TensorBoard; non-finite values are written as null."""
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()})
        try:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:  # a full disk: name the file (a resumed run drops a torn last line)
            from rlhfkit.data.files import naming

            raise naming(err, self.metrics_path) from None
        writer = self._writer()
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, float(v), step)
            writer.flush()

    def _writer(self) -> Any:
        if self._tb is None and self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a pinned dependency; tolerate its absence in stripped installs
                self._tensorboard = False
                return None
            # purge_step: TensorBoard hides the earlier events at or after it (a resumed run logs them again)
            self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=self._purge_step)
        return self._tb

    def resume_at(self, step: int) -> None:
        """Continue the log after optimizer step `step` (0: from the start): metrics.jsonl rows after it are
        dropped and TensorBoard's are hidden, since the resumed run logs those steps again."""
        self.truncate_metrics(step)
        if (self.dir / "tb").exists():
            self._purge_step = step + 1

    def truncate_metrics(self, last_step: int) -> None:
        """Drop logged rows after `last_step` (and a torn last line), atomically: a kill meanwhile leaves the
        old file whole."""
        if not self.is_main or not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        rows = [r for r, step in zip(lines, map(_step_of, lines)) if step is not None and step <= last_step]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)

    def write_json(self, name: str, data: Any) -> Path:
        """Write `data` as <run>/<name> (atomically: a reader never finds half a summary.json)."""
        from rlhfkit.data.files import write_text

        path = self.dir / name
        if self.is_main:
            write_text(path, json.dumps(data, indent=2, sort_keys=True))
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank or torn one (a kill mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def say(message: str) -> None:
    """One line of progress for a person following along (stderr keeps stdout for data)."""
    print(message, file=sys.stderr, flush=True)
