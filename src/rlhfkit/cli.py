"""`rlhfkit <command> [subcommand] [options]`: dispatches to each stage's `main(argv)`.

Stage modules are imported lazily so `rlhfkit --help` stays fast and a stage's heavy dependencies load only
when it runs. Each stage parses its own options from a typed config (see rlhfkit.config).
"""

from __future__ import annotations

import importlib
import os
import sys

# "command" or "command subcommand" -> "module:function"; each function takes argv (list[str]).
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("rlhfkit.sft:pretrain_main", "train a tokenizer and a model from scratch on a corpus"),
    "sft": ("rlhfkit.sft:sft_main", "supervised fine-tuning on prompt/response pairs or messages"),
    "sample": ("rlhfkit.bestofn:sample_main", "sample K completions per prompt -> candidates JSONL"),
    "rm train": ("rlhfkit.reward.cli:train_main", "train a reward model on preferences or rankings"),
    "rm eval": ("rlhfkit.reward.cli:eval_main", "held-out accuracy, margin and calibration of a reward model"),
    "rm score": ("rlhfkit.reward.cli:score_main", "add reward-model scores to a candidates file"),
    "label auto": ("rlhfkit.labeling.auto:main", "label candidates with a gold function or reward model"),
    "label serve": ("rlhfkit.labeling.web:serve_main", "web app where people rank and score responses"),
    "label add-labeler": ("rlhfkit.labeling.web:add_labeler_main", "create a labeler; prints a login token"),
    "label export": ("rlhfkit.labeling.web:export_main", "export collected labels as preferences/rankings"),
    "label revoke": ("rlhfkit.labeling.web:revoke_main", "revoke a labeler's token and sign out their sessions"),
    "dpo": ("rlhfkit.dpo.cli:main", "DPO, IPO, cDPO, preferred-FT, unlikelihood; offline or online"),
    "ppo": ("rlhfkit.ppo.run:main", "PPO with a KL penalty (GAE, RLOO or GRPO advantages)"),
    "eval reward-kl": ("rlhfkit.evaluate:reward_kl_main", "mean gold reward and KL to the reference"),
    "eval win-rate": ("rlhfkit.evaluate:win_rate_main", "win rate of policy A over B under a judge"),
    "eval judge-agreement": ("rlhfkit.judges.agreement:main", "how often a judge agrees with gold preferences"),
    "eval beta-for-kl": ("rlhfkit.dpo.cli:beta_for_kl_main", "fit log(beta) vs log(KL); predict beta"),
    "data corpus": ("rlhfkit.corpus:main", "build the embedded offline corpus and prompt splits"),
    "data mine-dialogues": ("rlhfkit.dialogues:main", "mine multi-turn dialogues from raw text"),
    "data chitchat": ("rlhfkit.corpus:chitchat_sft_main", "chitchat-dataset -> multi-turn SFT data"),
    "data chitchat-preferences": ("rlhfkit.corpus:chitchat_preferences_main", "rated chitchat -> preferences"),
    "data check": ("rlhfkit.data.check:main", "what a data file is read as; valid records; first problems"),
    "experiment sentiment": ("rlhfkit.experiments.sentiment:main", "the DPO paper's sentiment experiment"),
    "experiment factuality": ("rlhfkit.experiments.factuality.experiment:main",
                              "FactTune: factuality tuning from automatic preferences"),
}


INTERRUPTED = ("rlhfkit: interrupted; run the same command again with --train.resume to continue from the last "
               "checkpoint (`rlhfkit experiment` picks up where it stopped by itself)")


def _usage(group: str | None = None) -> str:
    """Every command, or a group's subcommands (`rlhfkit rm`)."""
    names = [n for n in COMMANDS if group is None or n.startswith(group + " ")]
    width = max(len(name) for name in names)
    head = f"rlhfkit {group} <subcommand>" if group else "rlhfkit <command>"
    lines = [f"usage: {head} [options]   (add --help for a command's options; --config FILE reads them from YAML)",
             ""]
    lines += [f"  {name:<{width}}  {COMMANDS[name][1]}" for name in names]
    return "\n".join(lines)


def groups() -> set[str]:
    """Command groups: the first word of two-word commands (rm, label, eval, data, experiment)."""
    return {name.split()[0] for name in COMMANDS if " " in name}


def resolve(argv: list[str]) -> tuple[str, list[str]]:
    """Find the longest command name that prefixes argv; return its target and the remaining args."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return COMMANDS[name][0], argv[n:]
    raise KeyError(" ".join(argv[:2]))


def quiet_libraries() -> None:
    """rlhfkit prints its own progress; keep transformers' per-load reports and bars for real warnings only."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_line(message: str) -> str:
    """An error message on one line: a library's message may span several (a hub error adds advice lines)."""
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run a command; its errors that a user can fix are one line on stderr, `rlhfkit: error: ...`, and a non-zero
    exit status: RlhfkitError (bad input, named by the code that found it) and OSError about a named file (a full
    disk, a permission). Any other exception is a bug and keeps its traceback."""
    from rlhfkit.errors import RlhfkitError

    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    try:
        target, rest = resolve(argv)
    except KeyError:
        if argv[0] in groups():
            asked = len(argv) == 1 or argv[1] in ("-h", "--help")
            if not asked:
                print(f"rlhfkit: unknown subcommand '{argv[1]}' of '{argv[0]}'", file=sys.stderr)
            print(_usage(argv[0]), file=sys.stdout if asked else sys.stderr)
            return 0 if asked else 2
        print(f"rlhfkit: unknown command '{' '.join(argv[:2])}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = target.split(":")
    try:
        result = getattr(importlib.import_module(module_name), func_name)(rest)
    except RlhfkitError as err:
        print(f"rlhfkit: error: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rlhfkit ... | head`: the reader left; not an error of ours
        sys.stdout = None
        return 141
    except OSError as err:
        if err.filename is None:  # nothing the user could act on is named: keep the traceback
            raise
        print(f"rlhfkit: error: {err.filename}: {one_line(err.strerror or str(err))}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
