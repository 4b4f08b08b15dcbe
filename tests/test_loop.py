import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import OptimConfig, TrainConfig
from rlhfkit.data import Encoded, collate
from rlhfkit.errors import TrainingDiverged
from rlhfkit.loop import checkpoint_dirs, fit, lr_lambda, step_indices
from rlhfkit.sft import lm_objective
from rlhfkit.tracking import Run, read_metrics

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")


def examples_for(tok, n=48):
    texts = [f"the movie {i} was {'great' if i % 3 else 'awful'} fun" for i in range(n)]
    return [Encoded(ids, [1] * len(ids)) for ids in (tok(t)["input_ids"] for t in texts)]


def test_schedule_warmup_then_cosine_to_min():
    f = lr_lambda(OptimConfig(warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    assert [round(f(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == 1.0 and math.isclose(f(9), 0.55) and math.isclose(f(14), 0.1)


def test_data_order_is_a_function_of_seed_and_step_and_ranks_split_the_global_batch():
    cfg = TrainConfig(batch_size=2, grad_accum=2, seed=3)
    one = step_indices(cfg, 20, 7, processes=1, rank=0)
    assert one == step_indices(cfg, 20, 7, processes=1, rank=0)
    cfg2 = TrainConfig(batch_size=2, grad_accum=1, seed=3)
    two = step_indices(cfg2, 20, 7, processes=2, rank=0) + step_indices(cfg2, 20, 7, processes=2, rank=1)
    assert [i for mb in one for i in mb] == [i for mb in two for i in mb]
    epoch = [i for s in range(5) for mb in step_indices(cfg, 20, s, 1, 0) for i in mb]
    assert sorted(epoch) == list(range(20))  # one epoch visits every example once


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, tiny_tokenizer, tiny_model):
    cfg = TrainConfig(batch_size=4, max_steps=20, save_every=5, progress=False)
    calls = []

    def objective(model, batch):
        loss, metrics = lm_objective(model, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 8 else loss), metrics

    run = Run(tmp_path / "run", cfg)
    with pytest.raises(TrainingDiverged) as err:
        fit(objective, tiny_model, examples_for(tiny_tokenizer), lambda ex: collate(ex, 2), cfg, OptimConfig(), run)
    assert "non-finite loss at optimizer step 8" in str(err.value)
    assert "step-0000005" in str(err.value)
    assert [d.name for d in checkpoint_dirs(tmp_path / "run")] == ["step-0000005"]
    assert (tmp_path / "run" / "config.yaml").exists()
    assert all(r["step"] <= 5 for r in read_metrics(tmp_path / "run"))


def pretrain_cmd(out, steps=400):
    return [str(BIN / "rlhfkit"), "pretrain", "--data.train", str(out.parent / "corpus.jsonl"), "--out", str(out),
            "--vocab-size", "300", "--model.tiny.hidden-size", "48", "--model.tiny.num-layers", "2",
            "--model.tiny.intermediate-size", "96", "--data.max-length", "32", "--train.batch-size", "8",
            "--train.max-steps", str(steps), "--train.save-every", "10", "--train.eval-every", "1000",
            "--train.threads", "1", "--train.progress", "False", "--train.keep-checkpoints", "3"]


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, toy_corpus):
    (tmp_path / "corpus.jsonl").write_bytes(Path(toy_corpus).read_bytes())
    steps = 400
    subprocess.run(pretrain_cmd(tmp_path / "a", steps), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(pretrain_cmd(tmp_path / "b", steps), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint_dirs(tmp_path / "b") and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_dirs(tmp_path / "b")[-1].name
    assert not (tmp_path / "b" / "model").exists(), "the run finished before it could be killed"
    subprocess.run(pretrain_cmd(tmp_path / "b", steps) + ["--train.resume", "True"], check=True, env=ENV,
                   capture_output=True)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed from {killed_at}: max weight difference {worst}"
    steps_logged = [r["step"] for r in read_metrics(tmp_path / "b") if "train/loss" in r]
    assert steps_logged == sorted(set(steps_logged))  # no duplicated rows after the resume


def test_two_process_accelerate_matches_one_process_at_same_global_batch(tmp_path):
    script = ROOT / "tests" / "scripts" / "fit_toy.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "2", "6"], check=True, env=ENV,
                   capture_output=True)
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(script),
              str(tmp_path / "two"), "1", "6"]
    res = subprocess.run(launch, env=dict(ENV, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "rank-0.json").read_text())
    r0 = json.loads((tmp_path / "two" / "rank-0.json").read_text())
    r1 = json.loads((tmp_path / "two" / "rank-1.json").read_text())
    assert r0["processes"] == 2 and r1["processes"] == 2  # really two processes (not a silent single one)
    assert r0["param_sum"] == r1["param_sum"] and r0["param_abs_sum"] == r1["param_abs_sum"]  # ranks in sync
    # global batch 8 either way: 1 process x 2 micro-batches of 4 == 2 processes x 1 micro-batch of 4
    one_steps = [sum(one["losses"][i : i + 2]) / 2 for i in range(0, len(one["losses"]), 2)]
    two_steps = [(x + y) / 2 for x, y in zip(r0["losses"], r1["losses"])]
    assert len(one_steps) == len(two_steps) == 6
    for x, y in zip(one_steps, two_steps):
        assert abs(x - y) < 1e-4, (one_steps, two_steps)
    assert abs(one["param_abs_sum"] - r0["param_abs_sum"]) / one["param_abs_sum"] < 1e-5


def test_snapshots_are_loadable_models_at_the_requested_steps(tmp_path, tiny_tokenizer, tiny_model):
    from transformers import AutoModelForCausalLM

    from rlhfkit.loop import snapshot_dirs

    cfg = TrainConfig(batch_size=4, max_steps=5, snapshot_every=2, save_every=100, progress=False)
    fit(lm_objective, tiny_model, examples_for(tiny_tokenizer), lambda ex: collate(ex, 2), cfg, OptimConfig(),
        Run(tmp_path / "run", cfg), tokenizer=tiny_tokenizer)
    snaps = snapshot_dirs(tmp_path / "run")
    assert [d.name for d in snaps] == ["step-0000002", "step-0000004", "step-0000005"]
    last = AutoModelForCausalLM.from_pretrained(snaps[-1])
    ids = torch.tensor([[0, 5, 6]])
    torch.testing.assert_close(last(input_ids=ids).logits, tiny_model(input_ids=ids).logits)


def test_snapshot_count_spreads_over_the_real_step_count_and_the_final_model_reuses_the_last(
        tmp_path, tiny_tokenizer, tiny_model):
    from rlhfkit.loop import save_final_model, snapshot_dirs

    cfg = TrainConfig(batch_size=4, max_steps=7, snapshots=3, save_every=100, progress=False)
    result = fit(lm_objective, tiny_model, examples_for(tiny_tokenizer), lambda ex: collate(ex, 2), cfg,
                 OptimConfig(), Run(tmp_path / "run", cfg), tokenizer=tiny_tokenizer)
    assert [d.name for d in snapshot_dirs(tmp_path / "run")] == ["step-0000003", "step-0000006", "step-0000007"]
    assert result.snapshot == tmp_path / "run" / "snapshots" / "step-0000007"
    final = save_final_model(tiny_model, tiny_tokenizer, tmp_path / "run", result.snapshot)
    assert (final / "model.safetensors").stat().st_ino == (result.snapshot / "model.safetensors").stat().st_ino
    assert (final / "tokenizer.json").exists()
    written = save_final_model(tiny_model, tiny_tokenizer, tmp_path / "other", None)  # no snapshot: a real save
    assert (written / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()


def test_bare_boolean_flags_mean_true():
    from rlhfkit.config import parse
    from rlhfkit.sft import SFTConfig

    cfg = parse(SFTConfig, ["--train.resume", "--train.progress", "False", "--out", "x"])
    assert cfg.train.resume is True and cfg.train.progress is False and cfg.out == "x"
    cfg = parse(SFTConfig, ["--train.no-progress", "--lora.no-merge"])
    assert cfg.train.progress is False and cfg.lora.merge is False


def test_time_limit_stops_with_a_checkpoint_and_a_final_evaluation(tmp_path, tiny_tokenizer, tiny_model):
    cfg = TrainConfig(batch_size=4, max_steps=10_000, max_minutes=0.0, eval_every=10**9, save_every=10**9,
                      progress=False)
    examples = examples_for(tiny_tokenizer)
    result = fit(lm_objective, tiny_model, examples, lambda ex: collate(ex, 2), cfg, OptimConfig(),
                 Run(tmp_path / "run", cfg), eval_examples=examples[:8])
    assert result.status == "time_limit" and result.step == 1 and result.planned_steps == 10_000
    assert "eval/loss" in result.eval_metrics
    assert [d.name for d in checkpoint_dirs(tmp_path / "run")] == ["step-0000001"]


# ------------------------------------------------------------------------------ run directories: resume or refuse
def test_a_directory_holding_a_run_is_refused_unless_resumed(tmp_path):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.tracking import check_run_dir

    Run(tmp_path / "missing", TrainConfig())  # a missing directory starts fresh
    (tmp_path / "empty").mkdir()
    Run(tmp_path / "empty", TrainConfig())
    Run(tmp_path / "empty", TrainConfig())  # config.yaml alone is not a run: nothing was logged yet
    held = tmp_path / "held"
    (held / "checkpoints").mkdir(parents=True)
    (held / "metrics.jsonl").write_text('{"step": 1, "time": 0.1, "train/loss": 2.0}\n')
    expected = (f"{held} already holds a run (checkpoints, metrics.jsonl); pass --train.resume to continue it, "
                "or choose another --out")
    with pytest.raises(RlhfkitError) as err:
        Run(held, TrainConfig())
    assert str(err.value) == expected and "\n" not in str(err.value)
    assert not (held / "config.yaml").exists()  # refused before anything was written
    with pytest.raises(RlhfkitError, match="already holds a run"):
        check_run_dir(held, resume=False)  # the same check, for a stage to make before loading anything
    run = Run(held, TrainConfig(resume=True))
    assert run.existing == ["checkpoints", "metrics.jsonl"] and (held / "config.yaml").exists()


def _fit_steps(tmp_path, tiny_tokenizer, tiny_arch, **train):
    """A fresh tiny model fitted in tmp_path/run (its Run closed afterwards, as finish_stage does)."""
    from rlhfkit.models import build_tiny

    cfg = TrainConfig(batch_size=4, log_every=1, eval_every=10**9, progress=False, **train)
    run = Run(tmp_path / "run", cfg)
    result = fit(lm_objective, build_tiny(tiny_tokenizer, tiny_arch, seed=0), examples_for(tiny_tokenizer),
                 lambda ex: collate(ex, 2), cfg, OptimConfig(), run, tokenizer=tiny_tokenizer)
    run.close()
    return result


def _tensorboard_steps(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_resume_from_an_earlier_checkpoint_drops_the_later_rows_events_and_snapshots(tmp_path, tiny_tokenizer,
                                                                                      tiny_arch):
    from rlhfkit.loop import snapshot_dirs

    run_dir = tmp_path / "run"
    _fit_steps(tmp_path, tiny_tokenizer, tiny_arch, max_steps=6, save_every=4, snapshot_every=5)
    shutil.rmtree(run_dir / "checkpoints" / "step-0000006")  # killed after step 6 was logged, before its checkpoint
    first = [d.stat().st_mtime_ns for d in snapshot_dirs(run_dir)]
    result = _fit_steps(tmp_path, tiny_tokenizer, tiny_arch, max_steps=6, save_every=4, snapshot_every=5,
                        resume=True)
    assert result.step == 6 and result.planned_steps == 6
    logged = [r["step"] for r in read_metrics(run_dir)]
    assert logged == [1, 2, 3, 4, 5, 6]  # rows 5 and 6 of the killed run were dropped, then logged again
    assert _tensorboard_steps(run_dir) == [1, 2, 3, 4, 5, 6]  # purge_step hides the killed run's 5 and 6
    assert len(list((run_dir / "tb").iterdir())) == 2  # TensorBoard continues in the same directory
    again = [d.stat().st_mtime_ns for d in snapshot_dirs(run_dir)]
    assert [d.name for d in snapshot_dirs(run_dir)] == ["step-0000005", "step-0000006"]
    assert all(a != b for a, b in zip(first, again))  # saved again by the resumed run, not kept from the killed one


def test_resume_with_no_checkpoint_starts_over_and_says_so(tmp_path, tiny_tokenizer, tiny_arch, capsys):
    run_dir = tmp_path / "run"
    _fit_steps(tmp_path, tiny_tokenizer, tiny_arch, max_steps=3, save_every=100)
    shutil.rmtree(run_dir / "checkpoints")  # e.g. an experiment's finished stage: its checkpoints are deleted
    capsys.readouterr()
    result = _fit_steps(tmp_path, tiny_tokenizer, tiny_arch, max_steps=2, save_every=100, resume=True)
    assert result.step == 2
    assert "no checkpoint to resume from; training from step 0" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]  # the old run's rows are gone, not mixed in
    assert _tensorboard_steps(run_dir) == [1, 2]


def test_truncating_metrics_drops_a_torn_last_line_and_replaces_the_file_atomically(tmp_path):
    run = Run(tmp_path / "run", TrainConfig())
    for step in (1, 2, 3):
        run.log(step, {"train/loss": 1.0 / step})
    run.close()
    with run.metrics_path.open("a") as f:
        f.write('{"step": 4, "ti')  # a kill mid-write
    run.truncate_metrics(2)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "metrics.jsonl", "tb"]


def test_rerunning_a_stage_into_its_directory_is_refused_in_one_line_and_resumed_when_asked(tmp_path, toy_corpus,
                                                                                             capsys):
    from rlhfkit import cli

    (tmp_path / "corpus.jsonl").write_bytes(Path(toy_corpus).read_bytes())
    out = tmp_path / "p"
    cmd = [str(a) for a in pretrain_cmd(out, steps=3)[1:]] + ["--train.log-every", "1"]
    assert cli.main(cmd) == 0
    rows = read_metrics(out)
    capsys.readouterr()
    assert cli.main(cmd) == 1
    err = capsys.readouterr().err
    assert err == (f"rlhfkit: error: {out} already holds a run (checkpoints, metrics.jsonl, summary.json, model, "
                   "tb); pass --train.resume to continue it, or choose another --out\n")
    assert read_metrics(out) == rows  # untouched
    assert cli.main(cmd[:-2] + ["--train.max-steps", "5", "--train.log-every", "1", "--train.resume"]) == 0
    steps = [r["step"] for r in read_metrics(out) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    assert json.loads((out / "summary.json").read_text())["step"] == 5


def test_a_stage_stopped_by_its_time_limit_records_the_steps_it_reached_and_planned(tmp_path, toy_corpus, capsys):
    from rlhfkit import cli

    (tmp_path / "corpus.jsonl").write_bytes(Path(toy_corpus).read_bytes())
    out = tmp_path / "p"
    assert cli.main([str(a) for a in pretrain_cmd(out, steps=50)[1:]] + ["--train.max-minutes", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["planned_steps"]) == ("time_limit", 1, 50)
    assert f"{out}: stopped by its time limit at step 1 of 50" in capsys.readouterr().err


def test_two_processes_agree_to_refuse_a_directory_holding_a_run(tmp_path):
    """Only the main process looks at the directory; the other gets its verdict (it would otherwise go on and
    wait forever in the first collective for a main process that has left)."""
    (tmp_path / "two" / "run").mkdir(parents=True)
    (tmp_path / "two" / "run" / "metrics.jsonl").write_text('{"step": 1, "time": 0.0}\n')
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518",
              str(ROOT / "tests" / "scripts" / "fit_toy.py"), str(tmp_path / "two"), "1", "2"]
    res = subprocess.run(launch, env=dict(ENV, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert res.stderr.count("already holds a run (metrics.jsonl)") >= 2, res.stderr[-3000:]  # both ranks raise
    assert not list((tmp_path / "two").glob("rank-*.json"))
