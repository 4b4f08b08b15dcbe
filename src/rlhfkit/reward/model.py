"""The reward model: a one-label sequence-classification model whose reward is read at the last real token.

Loading (a fresh head on a trunk, a model saved by `rm train`, or any one-label classifier from elsewhere),
saving (with the reward normalisation and the tokenisation lengths in its config), and the forward passes that
read rewards from right-/left-padded rows (`reward_at_last_token`) or from shared-prefix rows (`packed_rewards`,
`rlhfkit.data.packing`).

A reward model rlhfkit trains carries a tokenizer that ends every text with EOS and pads with a token other
than EOS (`tokenizer_for_transformers`), so the saved directory scores the ordinary transformers way —
`model(**tok(prompt, response, return_tensors="pt")).logits[0, 0]`, padded batches too — exactly as rlhfkit
does (docs/formats.md). rlhfkit itself tokenises with add_special_tokens=False and appends the EOS once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import ModelConfig
from rlhfkit.data import TokenBatch
from rlhfkit.data.packing import PrefixBatch, supports_shared_prefix
from rlhfkit.errors import RlhfkitError
from rlhfkit.logprobs import packed_hidden_states
from rlhfkit.ops import positions

# ModelConfig.dtype -> torch dtype (rlhfkit.models keeps its own mapping private)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------- reading rewards
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last real token, for left or right padding. (B, T) -> (B,) long."""
    cols = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (cols * attention_mask.long()).argmax(-1)  # (B,) the rightmost column where the mask is 1


def right_order(attention_mask: torch.Tensor) -> torch.Tensor:
    """The column order that moves each row's real tokens to the front (order kept) and padding to the end; gather
    every (B, T) tensor of a batch with it. (B, T) -> (B, T) long."""
    return torch.argsort(1 - attention_mask.long(), dim=-1, stable=True)


def reward_at_last_token(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar reward per sequence, read at the last real token (the EOS). (B, T), (B, T) -> (B,) float32.

    Decoder trunks (`score` head): trunk hidden states (B, T, H), gathered at the last attended column, then the
    head — never at "the last token that is not pad", which is wrong when pad == eos. Position ids ignore left
    padding. Encoders (no `score` head) use their own pooled classification output on right-aligned input, with
    the segment ids of a text pair (token_type_ids, (B, T)) when the tokenizer gave them.
    """
    head = getattr(model, "score", None)
    if head is None:
        order = right_order(attention_mask)  # (B, T)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return model(**{k: v.gather(-1, order) for k, v in inputs.items() if v is not None}).logits[:, 0].float()
    trunk = getattr(model, model.base_model_prefix)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                   use_cache=False).last_hidden_state  # (B, T, H); no KV cache: nothing is generated
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last_hidden = hidden[rows, last_token_index(attention_mask)]  # (B, H)
    return head(last_hidden)[:, 0].float()  # (B,)


def packed_rewards(model: Any, batch: PrefixBatch) -> torch.Tensor:
    """Rewards of a shared-prefix batch (rlhfkit.data.packing): the trunk runs once per prompt, the head at each
    response's last token. -> (G, B) float32 (entries of absent sides are meaningless; see batch.lengths)."""
    trunk = getattr(model, model.base_model_prefix)
    hidden = packed_hidden_states(trunk, batch)  # (B, T, H)
    rows = batch.rows[None, :].expand_as(batch.last_cols)  # (G, B): the row holding each group
    return model.score(hidden[rows, batch.last_cols])[..., 0].float()  # (G, B)


def supports_packing(model: Any) -> bool:
    """Shared-prefix packing needs a causal trunk with a `score` head and 4D-mask attention (not encoders)."""
    return getattr(model, "score", None) is not None and supports_shared_prefix(model)


class RewardModel(torch.nn.Module):
    """A sequence-classification model whose forward returns the rewards of a batch: (N,) for a TokenBatch,
    (G, B) for a PrefixBatch.

    The training loop prepares (e.g. DDP-wraps) this module, so the reward is computed inside its forward and
    gradients synchronise across processes.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, batch: TokenBatch | PrefixBatch) -> torch.Tensor:
        if isinstance(batch, PrefixBatch):
            return packed_rewards(self.model, batch)
        return reward_at_last_token(self.model, batch.input_ids, batch.attention_mask)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save the wrapped sequence-classification model (what a snapshot of a reward model is)."""
        self.model.save_pretrained(save_directory, **kwargs)


# ------------------------------------------------------------------------------------------ loading, saving
def batching_tokenizer(tokenizer: Any) -> Any:
    """Name an encoder's [SEP]/[CLS] as its EOS/BOS, and give a tokenizer without a pad token one to pad batches
    with: its EOS, else its unknown token (masks come from lengths, so any token the model knows pads safely)."""
    if tokenizer.eos_token_id is None and getattr(tokenizer, "sep_token", None):
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.bos_token_id is None and getattr(tokenizer, "cls_token", None):
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.pad_token_id is None:
        filler = tokenizer.eos_token or tokenizer.unk_token
        if filler is None:
            raise RlhfkitError("the reward model's tokenizer has no pad, EOS (or [SEP]) or unknown token to pad "
                               "batches with")
        tokenizer.pad_token = filler
    return tokenizer


def reward_tokenizer(tokenizer: Any) -> Any:
    """Make a tokenizer usable for rlhfkit's rewards (`batching_tokenizer`) and insist on the EOS rlhfkit's
    encoding appends and reads the reward at."""
    if tokenizer.eos_token_id is None and not getattr(tokenizer, "sep_token", None):
        raise RlhfkitError("the reward model's tokenizer has no EOS (or [SEP]) token to read the reward at")
    return batching_tokenizer(tokenizer)


def distinct_pad(model: Any, tokenizer: Any) -> Any:
    """A tokenizer that pads with a token other than EOS, and model.config.pad_token_id set to it.

    transformers' sequence-classification forward reads the score at the last token that is not pad_token_id;
    with pad == eos (most causal LMs) that skips the EOS the reward is read at. Such a tokenizer is copied with
    a new pad token (rlhfkit.models.SPECIAL's), and the model's embeddings grow by a row when that id has none.
    """
    from rlhfkit.models import SPECIAL

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_special_tokens({"pad_token": SPECIAL["pad_token"]})
        if tokenizer.pad_token_id >= model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(tokenizer.pad_token_id + 1, mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def appends_eos(tokenizer: Any) -> bool:
    """Whether the tokenizer ends a text with its EOS by itself (its special tokens on)."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def eos_appending(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer whose plain call encodes what `rlhfkit.data.encode_pair` does: its own BOS (when
    it adds one), the text, then EOS. `tok(prompt, response)` tokenises the two texts apart and joins them, as
    encode_pair does. The rule is the tokenizer's post-processor, so it is saved in tokenizer.json.

    Tokenizers that already end a text with EOS (encoders, whose EOS is [SEP]) are returned as they are, and so
    are slow (Python) tokenizers, which have no post-processor to set.
    """
    from tokenizers import processors

    from rlhfkit.data.encode import adds_bos

    if appends_eos(tokenizer) or not getattr(tokenizer, "is_fast", False):
        return tokenizer
    bos = [tokenizer.bos_token] if adds_bos(tokenizer) else []
    eos = tokenizer.eos_token
    out = copy.deepcopy(tokenizer)
    out.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=[*bos, "$A", eos], pair=[*bos, "$A", "$B", eos],
        special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in {*bos, eos}])
    return out


def tokenizer_for_transformers(model: Any, tokenizer: Any) -> Any:
    """The tokenizer to train and save a reward model with: `distinct_pad`, then `eos_appending`, so that
    transformers' own forward on `tok(prompt, response)` reads the score at the EOS, as rlhfkit does. May add a
    pad token (and an embedding row) to the model; sets model.config.pad_token_id."""
    return eos_appending(distinct_pad(model, tokenizer))


def load_reward_model(cfg: ModelConfig, seed: int = 0) -> tuple[Any, Any]:
    """(AutoModelForSequenceClassification with one label, tokenizer) for a ModelConfig; the head is new. The
    tokenizer is already the one the model is saved with (`tokenizer_for_transformers`), so snapshots are
    complete too."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import UNTRAINED_NOTE, build_tiny, load_tokenizer, resolve_model_name
    from rlhfkit.tracking import say

    torch.manual_seed(seed)  # the freshly initialised head is seeded too
    if cfg.name == "tiny":
        tokenizer = reward_tokenizer(load_tokenizer(cfg.tokenizer or "gpt2"))  # first: a missing package, one line
        say(UNTRAINED_NOTE)
        lm_config = build_tiny(tokenizer, cfg.tiny, seed).config
        lm_config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(lm_config)
    else:
        name = resolve_model_name(cfg.name)
        kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
        except (OSError, ValueError) as err:
            raise RlhfkitError(f"could not load a reward-model trunk from '{name}': {err}") from None
        tokenizer = reward_tokenizer(load_tokenizer(cfg.tokenizer or name))
    tokenizer = tokenizer_for_transformers(model, tokenizer)
    return model.to(DTYPES[cfg.dtype]), tokenizer


def save_reward_model(model: Any, tokenizer: Any, out_dir: str | Path, norm: dict, encoding: dict) -> Path:
    """save_pretrained with the reward normalisation and the tokenisation lengths in the model's config, and the
    tokenizer that makes transformers' own forward score like rlhfkit (`tokenizer_for_transformers`)."""
    from rlhfkit.models import save_model
    from rlhfkit.tracking import say

    tokenizer = tokenizer_for_transformers(model, tokenizer)
    if not appends_eos(tokenizer):
        say(f"rm: note: this slow tokenizer cannot append EOS by itself; to score {out_dir} with plain "
            "transformers, append tokenizer.eos_token to each response")
    model.config.rlhfkit_reward_norm = dict(norm)
    model.config.rlhfkit_encoding = dict(encoding)
    return save_model(model, tokenizer, out_dir)


def trained_by_rlhfkit(config: Any) -> bool:
    """Whether a reward model's config carries what `rm train` saves (its reward normalisation or its encoding
    lengths): such a model is scored with rlhfkit's encoding, any other the way its own tokenizer encodes."""
    return any(getattr(config, key, None) is not None for key in ("rlhfkit_reward_norm", "rlhfkit_encoding"))


def load_saved_reward_model(path: str | Path) -> tuple[Any, Any]:
    """A reward model saved by `rm train` (or any 1-label sequence-classification dir), in eval mode. The
    tokenizer is used as saved: rlhfkit's encoding appends the EOS itself whether or not the tokenizer would. A
    model from elsewhere needs no EOS (its chat template, or its text-pair encoding, ends the text), only a way
    to pad batches (`batching_tokenizer`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.models import resolve_model_name

    name = resolve_model_name(str(path))  # a missing directory is named, not looked up on the hub
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise RlhfkitError(f"could not load a reward model from '{path}': {err}") from None
    if model.config.num_labels != 1:
        raise RlhfkitError(f"'{path}' has {model.config.num_labels} labels; a reward model has one")
    prepare = reward_tokenizer if trained_by_rlhfkit(model.config) else batching_tokenizer
    return model.eval(), prepare(tokenizer)
