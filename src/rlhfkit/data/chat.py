"""Conversations in record files: the message lists public preference sets use, read into rlhfkit's records.

A prompt is either a string or a conversation: a list of `{"role", "content"}` messages (roles `system`, `user`,
`assistant`) that ends with a user turn — a whole multi-turn history. A response is always a string, the content
of one assistant turn. Readers turn the shapes people have into that form (docs/formats.md, "Conversations"):

    explicit       {"prompt": [...messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
                   (TRL's conversational format; a single assistant message may also be given as an object)
    full           {"prompt": "...", "chosen": [...history, assistant], "rejected": [...history, assistant]}
                   (UltraFeedback binarized: each side repeats the prompt as its history, which must match it;
                   the prompt is then that conversation, a string prompt its one user turn)
    implicit       {"chosen": [...history, assistant], "rejected": [...history, assistant]}: the prompt is the
                   shared history; or full texts {"chosen": "...", "rejected": "..."} whose prompt is their shared
                   beginning up to the start of the last assistant turn (`ASSISTANT_MARKERS`, e.g. HH-RLHF's
                   "\\n\\nAssistant:")

A one-turn conversation and the string prompt are different prompts: a string is a continuation under a tokenizer
without a chat template, a conversation is rendered with the plain template (`PLAIN_ROLES`) there. With a chat
template both are rendered with it and encode to the same tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any, Union

from rlhfkit.errors import DataError

Prompt = Union[str, list]
"""A prompt: text, or a conversation (list of {"role", "content"} dicts ending with a user turn)."""

ROLES = ("system", "user", "assistant")

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""The plain template's speaker names, for tokenizers without a chat template: `User: ...` lines, then
`Assistant:` and the reply after a space."""

ASSISTANT_MARKERS = (
    "\n\nAssistant:",  # Anthropic HH-RLHF
    "<|im_start|>assistant\n",  # ChatML (Qwen, SmolLM2, OpenHermes)
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    "<start_of_turn>model\n",  # Gemma
    "<|assistant|>\n",  # Zephyr, Phi-3
    "[/INST]",  # Llama 2, Mistral
)
"""Where an assistant turn starts in a full text: an implicit prompt ends with the last of these that the two
texts share. Texts rendered by a chat template keep it: `rlhfkit.data.encode` does not template them again."""

Where = tuple[str, "int | None"]


# ------------------------------------------------------------------------------------------------ messages
def check_messages(value: Any, where: Where, field: str) -> list[dict]:
    """A non-empty list of {"role", "content"} messages with known roles and non-empty string contents."""
    if not isinstance(value, list) or not value:
        raise DataError(*where, "expected a non-empty list of {role, content} messages", field)
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(*where, f"message {i}: role must be user, assistant or system", field)
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise DataError(*where, f"message {i}: content must be a non-empty string", field)
    return value


def as_prompt(value: Any, where: Where, field: str = "prompt", allow_empty: bool = True) -> Prompt:
    """A record's prompt: a string (empty only if allow_empty), or a conversation ending with a user turn."""
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise DataError(*where, "is empty", field)
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(*where, "is an empty conversation: a prompt needs at least one user turn", field)
        messages = check_messages(value, where, field)
        if messages[-1]["role"] != "user":
            raise DataError(*where, f"a conversation prompt must end with a user turn, not {messages[-1]['role']}",
                            field)
        return messages
    if value is None:
        raise DataError(*where, "missing (expected a string or a list of messages)", field)
    raise DataError(*where, f"expected a string or a list of messages, got {type(value).__name__}", field)


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as a conversation: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def split_reply(value: Any, where: Where, field: str) -> tuple[list[dict], Any]:
    """(history, reply) of a response given as messages: the reply is the last message, which must be an
    assistant turn; the history is every message before it (empty for TRL's `[{"role": "assistant", ...}]`).
    A string or any other value is returned as the reply with no history, for the caller to check."""
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list):
        return [], value
    messages = check_messages(value, where, field)
    if messages[-1]["role"] != "assistant":
        raise DataError(*where, "has no assistant reply: a response's last message must be an assistant turn", field)
    return messages[:-1], messages[-1]["content"]


def response_text(value: Any, where: Where, field: str, allow_empty: bool = False) -> str:
    """A response as its text: a string, or one assistant message (object or one-item list)."""
    history, reply = split_reply(value, where, field)
    if history:
        raise DataError(*where, "expected one assistant turn, got a conversation (give the prompt separately)",
                        field)
    if not isinstance(reply, str):
        raise DataError(*where, f"expected a string or an assistant message, got {type(reply).__name__}", field)
    if not allow_empty and not reply.strip():
        raise DataError(*where, "is empty", field)
    return reply


# ------------------------------------------------------------------------------------------------- pairs
def pair_prompt(rec: dict, where: Where) -> tuple[Prompt, str, str]:
    """(prompt, chosen, rejected) of a preference record in any accepted shape (module docstring)."""
    (history_c, chosen), (history_r, rejected) = (split_reply(rec.get(k), where, k) for k in ("chosen", "rejected"))
    if "prompt" not in rec:
        # full texts only: two lone assistant messages hold no prompt to cut, and are told so below
        if isinstance(rec.get("chosen"), str) and isinstance(rec.get("rejected"), str):
            return implicit_prompt(chosen, rejected, where)
        if history_c != history_r:
            raise DataError(*where, "chosen and rejected continue different conversations: their turns before the "
                            "last assistant reply must be the same (the shared prompt)", "rejected")
        if not history_c:
            raise DataError(*where, "no prompt: give 'prompt', or the conversation before the assistant reply in "
                            "chosen and rejected", "prompt")
        prompt: Prompt = as_prompt(history_c, where, "chosen")
    else:
        prompt = as_prompt(rec["prompt"], where)
        for history, field in ((history_c, "chosen"), (history_r, "rejected")):
            if history and history != as_messages(prompt):
                raise DataError(*where, "the conversation before the assistant reply differs from 'prompt'", field)
        if history_c or history_r:
            # UltraFeedback's string prompt is a copy of the user turn its sides hold: the pair is a conversation,
            # rendered as one (without a chat template "User: ...\nAssistant: reply", not "...reply" run on)
            prompt = as_messages(prompt)
    return prompt, _reply(chosen, where, "chosen"), _reply(rejected, where, "rejected")


def _reply(value: Any, where: Where, field: str) -> str:
    if value is None:
        raise DataError(*where, "missing (expected a string or an assistant message)", field)
    return response_text(value, where, field)


def shared_marker(chosen: str, rejected: str) -> tuple[int, str]:
    """(start, marker) of the assistant marker that ends last within the two texts' shared beginning; start -1
    when they share none."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    return max((chosen.rfind(marker, 0, shared), marker) for marker in ASSISTANT_MARKERS)


def implicit_prompt(chosen: str, rejected: str, where: Where) -> tuple[str, str, str]:
    """Full texts -> (prompt, chosen reply, rejected reply): the prompt is their shared beginning up to the end
    of the last assistant marker (`ASSISTANT_MARKERS`) in it, which must be each text's last one: texts that part
    before their last assistant turn do not share a prompt."""
    start, marker = shared_marker(chosen, rejected)
    if start < 0:
        raise DataError(*where, "no prompt: chosen and rejected share no beginning that ends where an assistant turn "
                        "starts (e.g. \"\\n\\nAssistant:\"); give 'prompt' or conversations", "prompt")
    end = start + len(marker)
    for text, field in ((chosen, "chosen"), (rejected, "rejected")):
        if text.rfind(marker) != start:
            raise DataError(*where, f"chosen and rejected differ before their last {marker!r}: they do not share a "
                            "prompt", field)
        if not text[end:].strip():
            raise DataError(*where, "the reply after the shared prompt is empty", field)
    if marker == ASSISTANT_MARKERS[0]:
        return chosen[:end], chosen[end:], rejected[end:]
    # a chat template ends the turn with its end-of-turn token and a line break: the token is the reply's end
    return chosen[:end], chosen[end:].rstrip(), rejected[end:].rstrip()


# ---------------------------------------------------------------------------------------------- rendering
def plain_conversation(messages: list[dict]) -> str:
    """A conversation in the plain template: one `Role: content` line per message."""
    return "".join(f"{PLAIN_ROLES[m['role']]}: {m['content']}\n" for m in messages)


def plain_prompt(prompt: Prompt) -> str:
    """A prompt as readable text, for scorers and pages that take text: a string as is, a conversation in the
    plain template."""
    return prompt if isinstance(prompt, str) else plain_conversation(prompt).rstrip("\n")


def prompt_key(prompt: Prompt) -> str:
    """A hashable identity of a prompt: the string, or the conversation's canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)
