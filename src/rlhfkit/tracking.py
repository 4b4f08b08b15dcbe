"""Run directories: the resolved config, metrics.jsonl, TensorBoard scalars and progress output.

Layout of a run directory:
    config.yaml        the resolved config (defaults + YAML + command line)
    metrics.jsonl      one JSON object per logged step: {"step": int, "time": float, "<name>": float, ...}
    tb/                TensorBoard event files (same scalars)
    checkpoints/       resumable checkpoints (see rlhfkit.loop)
    model/             the final model, loadable with AutoModel*.from_pretrained
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rlhfkit import config as config_lib


class Run:
    """A run directory that metrics are logged to. Only the main process writes."""

    def __init__(self, out_dir: str | Path, cfg: Any = None, is_main: bool = True, tensorboard: bool = True):
        self.dir = Path(out_dir)
        self.is_main = is_main
        self._tb = None
        self._tensorboard = tensorboard
        self.start = time.time()
        if is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
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
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
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
            self._tb = SummaryWriter(str(self.dir / "tb"))
        return self._tb

    def truncate_metrics(self, last_step: int) -> None:
        """Drop logged rows after `last_step` (a resumed run re-logs them)."""
        if not self.is_main or not self.metrics_path.exists():
            return
        rows = [r for r in self.metrics_path.read_text().splitlines() if r and json.loads(r)["step"] <= last_step]
        self.metrics_path.write_text("".join(r + "\n" for r in rows))

    def write_json(self, name: str, data: Any) -> Path:
        path = self.dir / name
        if self.is_main:
            path.write_text(json.dumps(data, indent=2, sort_keys=True))
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def say(message: str) -> None:
    """One line of progress for a person following along (stderr keeps stdout for data)."""
    import sys

    print(message, file=sys.stderr, flush=True)
