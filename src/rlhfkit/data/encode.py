"""Tokenisation: records to `Encoded` examples (token ids and a loss mask) under the length policy.

Prompt and response are tokenised separately and concatenated, so no BPE merge can cross the boundary and
the prompt/response split is exact. EOS is appended once (never when the response was cut short: the model
must not learn to stop where the text did not). Masks are built from lengths, never from token ids, so
pad == eos cannot hide the real EOS from the loss.

A prompt is a string or a conversation (`rlhfkit.data.chat`); `prompt_text` renders either with the tokenizer's chat
template, or without one as a continuation (a string) or the plain template (`PLAIN_ROLES`, a conversation).
`TruncationStats` counts what the truncation policy did.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from rlhfkit.data.chat import PLAIN_ROLES, Prompt, as_messages, plain_conversation


@dataclass
class Encoded:
    """One tokenised example. input_ids and loss_mask have equal length; loss_mask is 1 on trained tokens."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def prompt_length(self) -> int:
        """Tokens before the first trained token."""
        return self.loss_mask.index(1) if 1 in self.loss_mask else len(self.loss_mask)


@dataclass
class TruncationStats:
    """What the truncation policy did; reported by every stage that tokenises."""

    seen: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_response: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def summary(self) -> str:
        return (
            f"{self.seen} records: {self.truncated} truncated, {self.dropped_too_long} dropped as too long, "
            f"{self.dropped_no_response} dropped with no response tokens left"
        )


def check_lengths(cfg: Any) -> None:
    """Refuse (one line) a DataConfig whose prompt budget fills the whole sequence: truncation keeps the last
    `max_prompt_length` prompt tokens, so only `max_prompt_length < max_length` leaves every record room for a
    response (otherwise records with long prompts would be dropped as having no response left)."""
    from rlhfkit.errors import RlhfkitError

    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise RlhfkitError(f"--data.max-prompt-length {cfg.max_prompt_length} leaves no room for a response within "
                           f"--data.max-length {cfg.max_length}: it must be at least 1 and less than max-length")


def _ids(tokenizer: Any, text: str) -> list[int]:
    """A text's token ids without the tokenizer's own special tokens: BOS is added in `_bos_prefix` and EOS by
    `encode_pair`, so a tokenizer that appends EOS by itself (a saved reward model's) never gives two."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS before a text by itself (its special tokens on)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _bos_prefix(tokenizer: Any, first_ids: list[int]) -> list[int]:
    """[bos] if this tokenizer adds a BOS by itself and the text does not already start with it."""
    bos = tokenizer.bos_token_id
    if bos is None or (first_ids and first_ids[0] == bos):
        return []
    return [bos] if adds_bos(tokenizer) else []


def _segments_to_example(
    segments: list[tuple[list[int], int]], max_length: int, max_prompt_length: int, policy: str, stats: TruncationStats
) -> Encoded | None:
    """Join (ids, trained) segments. Over-long: cut the untrained prefix from the left, then the end."""
    stats.seen += 1
    ids = [t for seg, _ in segments for t in seg]
    mask = [m for seg, m in segments for _ in seg]
    if 1 not in mask:
        return _no_response(stats)
    if len(ids) <= max_length and mask.index(1) <= max_prompt_length:
        return Encoded(ids, mask)
    if policy == "drop":
        stats.dropped_too_long += 1
        return None
    stats.truncated += 1
    start = mask.index(1) if 1 in mask else len(mask)
    cut = max(0, start - max_prompt_length)  # keep the end of the prompt, nearest the response
    ids, mask = ids[cut:], mask[cut:]
    ids, mask = ids[:max_length], mask[:max_length]
    return Encoded(ids, mask) if 1 in mask else _no_response(stats)


def _no_response(stats: TruncationStats) -> None:
    stats.dropped_no_response += 1
    return None


def encode_pair(
    tokenizer: Any,
    prompt: Prompt,
    response: str,
    max_length: int,
    max_prompt_length: int,
    policy: str = "truncate",
    stats: TruncationStats | None = None,
    chat: bool | None = None,
) -> Encoded | None:
    """Tokenise (prompt, response) -> Encoded, or None when the policy drops it.

    The prompt is rendered by `prompt_text` (a string or a conversation; chat=None uses the tokenizer's chat
    template when it has one); the response follows it (`response_text`) and is trained, EOS appended.
    """
    stats = stats if stats is not None else TruncationStats()
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    response_ids = _ids(tokenizer, response_text(tokenizer, prompt, response, chat))
    eos = tokenizer.eos_token_id
    if not response_ids or response_ids[-1] != eos:
        response_ids.append(eos)
    return _segments_to_example([(prompt_ids, 0), (response_ids, 1)], max_length, max_prompt_length, policy, stats)


def encode_prompt(tokenizer: Any, prompt: Prompt, chat: bool | None = None) -> list[int]:
    """Prompt token ids exactly as training sees them (`prompt_text`), BOS first when the tokenizer uses one,
    never twice."""
    prompt_ids = _ids(tokenizer, prompt_text(tokenizer, prompt, chat))
    return _bos_prefix(tokenizer, prompt_ids) + prompt_ids


def _templated(tokenizer: Any, chat: bool | None) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat


def prompt_text(tokenizer: Any, prompt: Prompt, chat: bool | None = None) -> str:
    """A prompt as the model reads it, up to where the response starts.

    With a chat template (chat=None: when the tokenizer has one): a conversation rendered with the generation
    prompt, a string as one user turn — unless the string already ends as the template ends a prompt (a text
    the template rendered, e.g. an implicit prompt cut from a full conversation), which is used as is.
    Without one: a string is the text a response continues; a conversation is the plain template,
    `Role: content` lines and then `Assistant:`."""
    if not _templated(tokenizer, chat):
        return prompt if isinstance(prompt, str) else plain_conversation(prompt) + PLAIN_ROLES["assistant"] + ":"
    if isinstance(prompt, str) and _ends_with_header(tokenizer, prompt):
        return prompt
    return render_chat(tokenizer, as_messages(prompt), True)


def response_text(tokenizer: Any, prompt: Prompt, response: str, chat: bool | None = None) -> str:
    """The response's text after `prompt_text`: as is, except after the plain template's `Assistant:`, which it
    follows after a space (unless it starts with whitespace, as a reply sampled there does)."""
    if isinstance(prompt, list) and not _templated(tokenizer, chat) and not response[:1].isspace():
        return " " + response
    return response


def _ends_with_header(tokenizer: Any, text: str) -> bool:
    """Whether text ends as the chat template ends a prompt: with what it renders after a user turn's content,
    the generation prompt included (ChatML: `<|im_end|>\n<|im_start|>assistant\n`). Not the generation prompt
    alone: Llama 2's and Mistral's is empty, their prompt ends with the user turn's ` [/INST]`."""
    end = _prompt_end(tokenizer, str(tokenizer.chat_template))
    return bool(end) and text.rstrip().endswith(end)


@functools.lru_cache(maxsize=16)
def _prompt_end(tokenizer: Any, template: str) -> str:
    """What the chat template renders after a user turn's content, trailing whitespace stripped. Cached per
    tokenizer and template (the key's second part: a template set later is rendered anew): every string prompt
    encoded asks, and rendering it costs about a sixth of encoding a pair."""
    sentinel = "rlhfkit-user-turn"
    rendered = render_chat(tokenizer, [{"role": "user", "content": sentinel}], True)
    return rendered[rendered.rindex(sentinel) + len(sentinel):].rstrip()


def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template as text (never tokenised here, so BOS is handled in one place)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _message_segments(tokenizer: Any, messages: list[dict]) -> list[tuple[str, int]]:
    """Split a conversation into (text, trained) segments; assistant contents (and their end) are trained.

    With a chat template: the text each assistant turn adds to the rendered conversation is trained, the rest
    (including the generation prompt that precedes it) is context. Without one, the documented plain template:
    `User: ...\\n` context lines, `Assistant:` as context, ` content` + EOS trained, then `\\n`.
    """
    if not getattr(tokenizer, "chat_template", None):
        segs: list[tuple[str, int]] = []
        for m in messages:
            if m["role"] == "assistant":
                segs += [("Assistant:", 0), (" " + m["content"] + tokenizer.eos_token, 1), ("\n", 0)]
            else:
                segs.append((plain_conversation([m]), 0))
        return segs
    segs, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        after = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("chat template is not prefix-stable; cannot isolate assistant turns")
        segs += [(before[len(done) :], 0), (after[len(before) :], 1)]
        done = after
    return segs


def encode_messages(
    tokenizer: Any,
    messages: list[dict],
    max_length: int,
    max_prompt_length: int,
    policy: str = "truncate",
    stats: TruncationStats | None = None,
) -> Encoded | None:
    """Tokenise a multi-turn conversation; only assistant turns are trained. Segments are tokenised apart."""
    stats = stats if stats is not None else TruncationStats()
    segments = [(_ids(tokenizer, text), trained) for text, trained in _message_segments(tokenizer, messages)]
    segments = [(ids, t) for ids, t in segments if ids]
    if segments:
        segments[0] = (_bos_prefix(tokenizer, segments[0][0]) + segments[0][0], segments[0][1])
    return _segments_to_example(segments, max_length, max_prompt_length, policy, stats)


def encode_sft_records(tokenizer: Any, records: list[dict], cfg: Any) -> tuple[list[Encoded], TruncationStats]:
    """Encode sft records (pairs or messages) under a DataConfig's length policy."""
    stats = TruncationStats()
    out = []
    for rec in records:
        if "messages" in rec:
            enc = encode_messages(tokenizer, rec["messages"], cfg.max_length, cfg.max_prompt_length, cfg.truncation,
                                  stats)
        else:
            enc = encode_pair(
                tokenizer, rec["prompt"], rec["response"], cfg.max_length, cfg.max_prompt_length, cfg.truncation, stats
            )
        if enc is not None:
            out.append(enc)
    return out, stats
