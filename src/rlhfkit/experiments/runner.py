"""The machinery every rlhfkit experiment shares: named stages run in order, resumed, replicated per seed, reported.

An experiment is a `Recipe`: its config class and presets, its stages (shared ones, the ones repeated per seed
replicate, final ones such as evaluation) and a report hook that adds its findings to the report. `run` does the
rest, the same way for every recipe:

- each stage writes `<dir>/stages/<name>.json` when it finishes; a re-run loads finished stages instead of
  re-running them, and every training stage resumes from its last checkpoint (`Experiment.train_cfg`); only a
  final stage the recipe's `redo` names (an optional one turned on since) runs again, and the report after it;
- a stage file records the stage's real status: "done", or "time_limit" for a training stage its time limit
  stopped (with the step it reached and the steps it was to reach), shown in its progress line and the report.
  Such a stage is final too: the limit is a cap the config chose, and the later stages build on its model, so a
  re-run keeps it rather than training on and leaving those stages built on an older model;
- `--seeds N` repeats the replicated stages with seeds seed+1 .. seed+N-1 under `<out>/seed<k>/`, each
  replicate reading the shared stages' results through a ChainMap;
- one progress line per stage, with an ETA from the recipe's estimates for the config;
- a last `report` stage reads the final stages' `evaluation.json` and writes the report (`rlhfkit.report`, or the
  recipe's own `write`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import ChainMap
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, MutableMapping, Protocol, Sequence, TypeVar

from rlhfkit.config import TrainConfig
from rlhfkit.data.files import check_output, write_text
from rlhfkit.report import stage_outcome
from rlhfkit.tracking import say


class RunConfig(Protocol):
    """What the runner reads of an experiment's config, a frozen dataclass (replicates are `replace`d copies).
    Optional: `kl_budget` (nats), the sentiment report's KL budget, read with getattr (None when a config has none).
    """

    @property
    def preset(self) -> str: ...
    @property
    def out(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def seeds(self) -> int: ...
    @property
    def threads(self) -> int | None: ...
    @property
    def keep_checkpoints(self) -> bool: ...


C = TypeVar("C", bound=RunConfig)


@dataclass
class Experiment(Generic[C]):
    """Paths and state of one experiment run, or of one seed replicate of its replicated stages.

    `dir` holds this replicate's artifacts (its stage files and whatever its stages write); `root` the ones
    every replicate shares (the shared and final stages' outputs, the report). For the first replicate both
    are the run directory.
    """

    cfg: C
    dir: Path
    estimates: dict[str, float]
    started: float = field(default_factory=time.time)
    results: MutableMapping[str, Any] = field(default_factory=dict)
    root: Path | None = None
    replicas: list["Experiment[C]"] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def shared(self, *parts: str) -> Path:
        return (self.root or self.dir).joinpath(*parts)

    def replica(self, k: int) -> "Experiment[C]":
        """The k-th seed replicate (k = 0 is this run itself). Its results read through to the run's (the shared
        stages'), whenever they finish; what the replicate's own stages write stays its own."""
        while len(self.replicas) <= k:
            i = len(self.replicas)
            self.replicas.append(self if i == 0 else Experiment(
                replace(self.cfg, seed=self.cfg.seed + i), self.dir / f"seed{i}", self.estimates,
                results=ChainMap({}, self.results), root=self.dir))
        return self.replicas[k]

    def train_cfg(self, **kw: Any) -> TrainConfig:
        # resume=True: a stage killed mid-way continues from its last checkpoint when the experiment is rerun
        base = dict(seed=self.cfg.seed, threads=self.cfg.threads, progress=False, log_every=10, resume=True)
        return TrainConfig(**{**base, **kw})


StageFn = Callable[[Experiment[Any]], dict]
NamedStage = tuple[str, StageFn]
Stage = tuple[int, str, StageFn]
"""(replicate, name, function): one step of a run's plan."""
ReportFn = Callable[[Experiment[Any], list[dict]], dict]
"""(experiment, evaluated methods) -> the recipe's own report entries; `findings` must be among them."""


@dataclass(frozen=True)
class Recipe(Generic[C]):
    """One experiment: everything the runner cannot know. A new experiment is one of these, nothing copied."""

    name: str
    """`rlhfkit experiment <name>`; the default run directory is runs/<name>-<preset>."""
    title: str
    """The report's title (the preset is appended)."""
    config: type[C]
    presets: Mapping[str, C]
    """Named configs; `--preset` picks one (the first is the default), the other flags override it."""
    shared: Sequence[NamedStage]
    """Run once, before any replicate (data, base models, prompt splits)."""
    replicated: Callable[[C], Sequence[NamedStage]]
    """Run once per seed replicate, in order (preference data, reward model, every method's training)."""
    final: Sequence[NamedStage]
    """Run once after every replicate (evaluation, which writes EVALUATION, then any stage adding to its entries);
    the report stage follows."""
    estimates: Callable[[C], Mapping[str, float]]
    """Seconds per stage of a config (its preset's, and what its options add: an optional stage turned off costs
    0), for the ETA line only; a stage not named uses the "method" estimate."""
    report: ReportFn
    """The recipe's findings and other report entries, from the evaluated methods."""
    check: Callable[[C], None] | None = None
    """Refuses (RlhfkitError), before the first stage, what would fail only later: a missing package, a base
    model directory that does not exist. Read-only and fast."""
    redo: Callable[[C, Path], Sequence[str]] | None = None
    """(config, run directory) -> finished final stages whose results do not answer this config (an optional stage
    turned on after the run finished): they and the report run again, every other finished stage is kept."""
    write: Callable[[Path, dict], dict] | None = None
    """(run directory, report results) -> paths written: the recipe's report writer; None is `report.write_report`
    (the reward-vs-KL report)."""


# --------------------------------------------------------------------------------------------------- stages
def run_stage(exp: Experiment[Any], name: str, fn: StageFn, index: int, total: int, remaining: float = 0.0) -> dict:
    """Run `fn` once: a finished stage (its json exists) is loaded, not re-run. One line of progress each;
    `remaining` is the estimated seconds of every unfinished stage, for the ETA."""
    done_file = exp.path("stages", f"{name}.json")
    label = name if exp.root is None else f"{name} (seed {exp.cfg.seed})"
    if done_file.exists():
        result = json.loads(done_file.read_text())
        say(f"[{index}/{total}] {label}: {stage_outcome(result)} earlier ({result['seconds']:.0f} s), skipped")
        return result
    say(f"[{index}/{total}] {label}: running (est. {exp.estimates.get(name, 0):.0f} s; "
        f"~{remaining / 60:.1f} min left in the experiment)")
    t0 = time.time()
    out = fn(exp)
    result = {"name": name, **out, "seconds": time.time() - t0, "status": out.get("status", "done")}
    write_text(done_file, json.dumps(result, indent=2))  # atomic: a torn stage file would count as finished
    if not exp.cfg.keep_checkpoints:
        drop_checkpoints(result)
    if result["status"] == "done":
        say(f"[{index}/{total}] {label}: finished in {result['seconds']:.0f} s")
    else:
        say(f"[{index}/{total}] {label}: {stage_outcome(result)} after {result['seconds']:.0f} s; the experiment "
            "goes on with that step's model (the report says so)")
    return result


def drop_checkpoints(result: dict) -> None:
    """Delete the training checkpoints of a finished stage's run (the directory holding its `model`)."""
    model = result.get("model")
    if isinstance(model, str) and Path(model).is_dir():
        shutil.rmtree(Path(model).parent / "checkpoints", ignore_errors=True)


def plan(recipe: Recipe[C], cfg: C) -> list[Stage]:
    """(replicate, name, function) of every stage in run order: the shared stages, then each replicate's
    replicated stages, then the final stages and the report."""
    shared = [(0, name, fn) for name, fn in recipe.shared]
    per_seed = list(recipe.replicated(cfg))
    replicated = [(k, name, fn) for k in range(cfg.seeds) for name, fn in per_seed]
    final = [(0, name, fn) for name, fn in recipe.final]
    return shared + replicated + final + [(0, "report", partial(stage_report, recipe=recipe))]


def machine_scaled(table: Mapping[str, float], threads: int | None) -> dict[str, float]:
    """The recipe's seconds per stage (measured on the developers' machine) scaled to this machine's measured
    matmul rate (`rlhfkit.speed`) with the stages' thread count, with one line saying so; for the ETA line only."""
    import torch

    from rlhfkit.speed import REFERENCE_GFLOPS, matmul_gflops, scale_estimates, speed_factor

    if threads:
        torch.set_num_threads(threads)  # what every stage sets (rlhfkit.loop)
    gflops = matmul_gflops()
    factor = speed_factor(gflops)
    say(f"this machine: {gflops:.0f} GFLOP/s fp32 matmul ({torch.get_num_threads()} threads); stage estimates "
        f"x{factor:.2f} of the {REFERENCE_GFLOPS:.0f} GFLOP/s machine they were measured on")
    return scale_estimates(table, factor)


def stage_estimates(table: Mapping[str, float], stages: Sequence[Stage]) -> dict[str, float]:
    # stages the table does not name are the per-method training runs, which all cost about the same
    return {name: table.get(name, table["method"]) for _, name, _ in stages}


def run_stages(exp: Experiment[Any], stages: Sequence[Stage]) -> None:
    """Run (or load) every stage in order; each replicate's result is also recorded in the run's results under
    "<name> (seed <seed>)", so the report lists every replicate's stages."""

    def remaining() -> float:
        return sum(exp.estimates[name] for k, name, _ in stages
                   if not exp.replica(k).path("stages", f"{name}.json").exists())

    for i, (k, name, fn) in enumerate(stages, start=1):
        replica = exp.replica(k)  # replicate 0 is the run itself
        result = run_stage(replica, name, fn, i, len(stages), remaining())
        replica.results[name] = result
        if k:
            exp.results[f"{name} (seed {replica.cfg.seed})"] = result


def run(recipe: Recipe[C], cfg: C) -> dict:
    """Run (or resume) every stage of `recipe`; returns the report stage's result, the total stage time and the
    run directory."""
    from rlhfkit import config as config_lib
    from rlhfkit.errors import RlhfkitError

    if cfg.seeds < 1:
        raise RlhfkitError(f"--seeds must be >= 1, got {cfg.seeds}")
    out = Path(cfg.out or f"runs/{recipe.name}-{cfg.preset}")
    check_output(out, directory=True)
    if recipe.check is not None:
        recipe.check(cfg)
    for name in recipe.redo(cfg, out) if recipe.redo is not None else ():
        say(f"{name}: finished with other options than these; it and the report run again")
        for stage in (name, "report"):
            (out / "stages" / f"{stage}.json").unlink(missing_ok=True)
    config_lib.save(cfg, out / "config.yaml")
    stages = plan(recipe, cfg)
    exp = Experiment(cfg, out, stage_estimates(machine_scaled(recipe.estimates(cfg), cfg.threads), stages))
    run_stages(exp, stages)
    total = sum(r.get("seconds", 0.0) for r in exp.results.values())
    return {**exp.results["report"], "total_seconds": total, "dir": str(out)}


# ------------------------------------------------------------------------------------- shared training stages
def pretrain_stage(exp: Experiment[Any], folder: str, *, max_records: int | None = None,
                   max_minutes: float | None = None, save_every: int = 100) -> dict:
    """Pretrain the tiny model from scratch on `<folder>/pretrain_train.jsonl` (held out: pretrain_eval.jsonl),
    64-token blocks, with the config's arch, vocab_size, batch_size and pretrain_steps; a base_model other than
    "tiny" skips it (the result names that model)."""
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig
    from rlhfkit.sft import PretrainConfig, run_pretrain

    cfg = exp.cfg
    if cfg.base_model != "tiny":
        return {"model": cfg.base_model, "skipped": f"starting from {cfg.base_model}"}
    data = DataConfig(train=str(exp.path(folder, "pretrain_train.jsonl")),
                      eval=str(exp.path(folder, "pretrain_eval.jsonl")), max_length=64, max_records=max_records)
    return run_pretrain(PretrainConfig(
        data=data, model=ModelConfig(tiny=cfg.arch), vocab_size=cfg.vocab_size,
        train=exp.train_cfg(batch_size=cfg.batch_size, max_steps=cfg.pretrain_steps, max_minutes=max_minutes,
                            eval_every=10**9, save_every=save_every),
        optim=OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.1), out=str(exp.path("pretrain"))))


def sft_stage(exp: Experiment[Any], data: Any) -> dict:
    """SFT of the pretrain stage's model on `data` (a DataConfig) for the config's sft_steps x batch_size, LoRA rank
    lora_r; lr 1e-3 for the tiny model, 2e-5 for a pretrained one."""
    from rlhfkit.config import LoRAConfig, ModelConfig, OptimConfig
    from rlhfkit.sft import SFTConfig, run_sft

    cfg = exp.cfg
    return run_sft(SFTConfig(
        data=data, model=ModelConfig(name=exp.results["pretrain"]["model"]), lora=LoRAConfig(r=cfg.lora_r),
        train=exp.train_cfg(batch_size=cfg.batch_size, max_steps=cfg.sft_steps, eval_every=10**9, save_every=100),
        optim=OptimConfig(lr=1e-3 if cfg.base_model == "tiny" else 2e-5, warmup_steps=10),
        out=str(exp.path("sft"))))


# ------------------------------------------------------------------------------------ evaluation and report
EVALUATION = "evaluation.json"
"""Written by a recipe's final stages into the run directory: {"prompts": [str], "methods": [entry]}, each entry
`rlhfkit.report`'s method dict plus `completions` (one per prompt, of its final policy)."""


def policies(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, model dir) of every snapshot of a training run, plus its final model when no snapshot has its step:
    the points of its method's frontier in EVALUATION."""
    from rlhfkit.loop import dir_step, snapshot_dirs

    found = [(dir_step(d), d) for d in snapshot_dirs(run_dir)]
    summary = json.loads((run_dir / "summary.json").read_text())
    if not found or found[-1][0] != summary.get("step"):
        found.append((int(summary.get("step", len(found))), run_dir / "model"))
    return found


def checkpoint_entry(step: int, ev: Any) -> dict:
    """A checkpoint's entry in EVALUATION from its `rlhfkit.evaluate` result: the summary plus the per-prompt
    values (the findings' paired bootstrap resamples prompts)."""
    return {"step": step, **ev.summary(), "rewards": list(ev.prompt_rewards), "kls": list(ev.prompt_kls),
            "lengths": list(ev.prompt_lengths)}


def command_line(recipe: Recipe[Any], cfg: RunConfig) -> str:
    """The command that reproduces the run (the flags that pick its preset and replicates)."""
    seeds = f" --seeds {cfg.seeds}" if cfg.seeds > 1 else ""
    return f"rlhfkit experiment {recipe.name} --preset {cfg.preset}{seeds}"


def stage_summaries(results: Mapping[str, Any]) -> list[dict]:
    """The report's stage rows: name, seconds, status, and for training stages the step reached and planned."""
    rows = []
    for k, v in results.items():
        row = {"name": k, "seconds": v.get("seconds", 0.0), "status": v.get("status", "done")}
        row.update({key: v[key] for key in ("step", "planned_steps") if isinstance(v.get(key), int)})
        rows.append(row)
    return rows


def stage_report(exp: Experiment[Any], recipe: Recipe[Any]) -> dict:
    """Write the report from EVALUATION, the finished stages and the recipe's own entries (its findings)."""
    from rlhfkit import report

    ev = json.loads(exp.path(EVALUATION).read_text())
    methods = [{k: v for k, v in m.items() if k != "completions"} for m in ev["methods"]]
    samples = [{"prompt": p, "completions": {m["label"]: m["completions"][i] for m in ev["methods"]}}
               for i, p in enumerate(ev["prompts"][:8])]
    results = {
        "title": f"{recipe.title} (preset {exp.cfg.preset})", "preset": exp.cfg.preset,
        "budget": getattr(exp.cfg, "kl_budget", None),
        "commands": [command_line(recipe, exp.cfg)], "stages": stage_summaries(exp.results), "methods": methods,
        "samples": samples, **recipe.report(exp, methods),
    }
    paths = (recipe.write or report.write_report)(exp.dir, results)
    return {"paths": paths, "findings": results["findings"], "stages": results["stages"]}


# ------------------------------------------------------------------------------------------------------ CLI
def main(recipe: Recipe[Any], argv: list[str]) -> int:
    """`rlhfkit experiment <recipe.name>`: pick the preset, apply the flags, run, print the findings."""
    from rlhfkit import config as config_lib

    preset = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else next(iter(recipe.presets))
    if preset not in recipe.presets:
        from rlhfkit.errors import RlhfkitError

        raise RlhfkitError(f"unknown preset '{preset}': choose one of {', '.join(recipe.presets)}")
    cfg = config_lib.parse(recipe.config, argv, prog=f"rlhfkit experiment {recipe.name}",
                           default=recipe.presets[preset])
    result = run(recipe, cfg)
    say(f"{recipe.name} experiment finished in {result['total_seconds'] / 60:.1f} min of stage time")
    from rlhfkit.findings import verdict

    for f in result["findings"]:
        say(f"  {verdict(f['reproduced'])}: {f['claim']} ({f['evidence']})")
    for stage in result.get("stages", []):
        if stage["status"] != "done":
            say(f"  note: stage {stage['name']} {stage_outcome(stage)}")
    say(f"report: {result['paths']['html']}")
    return 0
