"""A language-model judge: pairwise (which of two responses is better, or a tie) and pointwise (a 1-7 score)
questions asked of a backend through a template, with position bias handled, unparseable answers retried and
every answer cached.

Pairwise questions are asked in both orders (A = the first response, then A = the second). The verdict is the
side both orders name; when they differ it is a tie, and the judgement counts as order-inconsistent. The
probability that the first response is better, where the backend gives log-probs, is the mean over the two
orders of P(first) at the answer token. An answer that names no side is re-asked up to `retries` times, sampled
at temperature 0.7 with seeds 1, 2, ... (a greedy re-ask would repeat it); if none parses, the verdict is None:
counted as unparseable, never a side and never a tie.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.chat import Prompt, plain_prompt
from rlhfkit.errors import RlhfkitError
from rlhfkit.judges.answers import choice_probability, expected_score, parse_choice, parse_score
from rlhfkit.judges.backends import Backend, Call, Completion, HFBackend, OpenAIBackend
from rlhfkit.judges.cache import JudgementCache, cache_key
from rlhfkit.judges.templates import Template, load_template

RETRY_TEMPERATURE = 0.7
LM_PREFIXES = ("hf:", "openai:")
FIRST_ORDER = {"A": "a", "B": "b", "tie": "tie"}  # an answer about (a, b) shown in that order
SECOND_ORDER = {"A": "b", "B": "a", "tie": "tie"}  # ... shown as (b, a)


def is_lm_judge(spec: str) -> bool:
    """Whether a judge spec names a language model (`hf:MODEL`, `openai:MODEL`) rather than a scorer."""
    return spec.startswith(LM_PREFIXES)


@dataclass(frozen=True, kw_only=True)
class JudgeOptions:
    """How a language-model judge (`--judge hf:MODEL` or `--judge openai:MODEL`) is asked; scorers ignore these,
    except --judge-norm, which is for reward models (`rm:PATH`)."""

    judge_url: str = ""
    """openai: the server's base URL, e.g. http://localhost:8000/v1 (vLLM, TGI, llama.cpp); "" = api.openai.com with
    OPENAI_API_KEY."""
    judge_template: str = ""
    """A built-in template (pairwise, principles, factuality, pointwise) or a template file; "" = pairwise for pairs,
    pointwise for scores."""
    judge_both_orders: bool = True
    """Ask each pairwise question in both orders; order disagreement is a tie (position bias)."""
    judge_retries: int = 2
    """Re-asks of an answer that names no side or score, sampled at temperature 0.7; then it counts as unparseable."""
    judge_max_tokens: int = 16
    """Longest answer generated."""
    judge_cache: str = ""
    """SQLite file of every answer, so a re-run or a crashed run pays for nothing twice; "" =
    $RLHFKIT_CACHE/judgements.sqlite (default ~/.cache/rlhfkit), "none" = no cache."""
    judge_concurrency: int = 4
    """openai: requests in flight at once."""
    judge_timeout: float = 60.0
    """openai: seconds per request before it is retried."""
    judge_http_retries: int = 3
    """openai: retries of a request that timed out, could not connect or got 408/409/429/5xx, with exponential
    back-off."""
    judge_logprobs: bool = True
    """openai: ask for the answer token's log-probs (P(A) vs P(B)); turn off for a server that refuses them."""
    judge_norm: str = ""
    """rm:PATH only: normalise the reward model's scores by their mean and std on this candidates / preferences /
    rankings file; "" = the model's stored statistics (rlhfkit-trained) or raw scores (any other model)."""


def default_cache_path() -> Path:
    from rlhfkit.models import cache_dir

    return cache_dir() / "judgements.sqlite"


def open_cache(spec: str) -> JudgementCache:
    return JudgementCache(None if spec == "none" else (spec or default_cache_path()))


@dataclass(frozen=True)
class PairVerdict:
    """The judgement of one pairwise question about responses a (first) and b (second).

    winner: "a", "b", "tie", or None when the judge gave no usable answer; prob_a: P(a is better) from log-probs
    (mean over the orders asked), None without them; answers: the raw answer of each order asked (a-first first);
    consistent: whether both orders named the same verdict (None with one order, or unparseable); scores: the
    two scores of a scorer judge; judge / template: provenance."""

    winner: str | None
    prob_a: float | None = None
    answers: tuple[str, ...] = ()
    consistent: bool | None = None
    scores: tuple[float, float] | None = None
    judge: str = ""
    template: str = ""

    def provenance(self) -> dict[str, Any]:
        """What a labelled record keeps of how it was judged (prob_a is about the order asked: the caller turns it
        into P(chosen))."""
        out: dict[str, Any] = {"judge": self.judge}
        if self.template:
            out.update(template=self.template, answers=list(self.answers), consistent=self.consistent)
        if self.scores is not None:
            out["scores"] = list(self.scores)
        return out


@dataclass(frozen=True)
class PointVerdict:
    """A 1-7 score: `score` parsed from the answer (None: unparseable), `expected` the probability-weighted score
    from log-probs (None without them), the raw answer, and provenance."""

    score: int | None
    expected: float | None
    answer: str
    judge: str
    template: str

    @property
    def value(self) -> float | None:
        """The number a scorer uses: the expectation where log-probs exist (it breaks the ties of a 7-point scale),
        else the parsed score."""
        return self.expected if self.expected is not None else (None if self.score is None else float(self.score))


def _combine(first_order: str | None, second_order: str | None) -> tuple[str | None, bool | None]:
    """(winner, consistent) from the parsed answers of order (a, b) and of order (b, a)."""
    if first_order is None or second_order is None:
        return None, None
    x, y = FIRST_ORDER[first_order], SECOND_ORDER[second_order]
    return (x, True) if x == y else ("tie", False)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


class LMJudge:
    """Pairwise and pointwise questions to one backend through one template, cached; `counts` says what
    happened (questions, backend calls, cache hits, unparseable answers, order-inconsistent verdicts)."""

    def __init__(self, spec: str, backend: Backend, template: Template, cache: JudgementCache,
                 retries: int = 2, max_tokens: int = 16, both_orders: bool = True):
        if retries < 0:
            raise RlhfkitError(f"--judge-retries must be >= 0, got {retries}")
        if max_tokens < 1:
            raise RlhfkitError(f"--judge-max-tokens must be >= 1, got {max_tokens}")
        self.spec, self.backend, self.template, self.cache = spec, backend, template, cache
        self.retries, self.max_tokens, self.both_orders = retries, max_tokens, both_orders
        self.counts: Counter = Counter()

    @property
    def identity(self) -> str:
        return self.backend.identity

    # ------------------------------------------------------------------------------------------ asking
    def _key(self, call: Call) -> str:
        return cache_key(self.identity, self.template.identity, call.messages, call.temperature, call.seed,
                         self.max_tokens)

    def _complete(self, calls: list[Call]) -> list[Completion]:
        """The completion of every call: from the cache where it is there, else from the backend, each stored as
        it arrives."""
        keys = [self._key(c) for c in calls]
        cached = self.cache.get_many(keys)
        out: list[Completion | None] = [Completion.from_dict(cached[k]) if k in cached else None for k in keys]
        first: dict[str, int] = {}  # each key not cached -> the first call that asks it
        for i, k in enumerate(keys):
            if k not in cached:
                first.setdefault(k, i)
        todo = list(first.values())
        self.counts["cache_hits"] += len(calls) - len(todo)
        for j, completion in self.backend.complete([calls[i] for i in todo], self.max_tokens):
            self.counts["backend_calls"] += 1
            self.cache.put(keys[todo[j]], self.identity, self.template.identity, completion.to_dict())
            out[todo[j]] = completion
        return [c if c is not None else out[first[keys[i]]] for i, c in enumerate(out)]  # type: ignore[misc]

    def _ask(self, chats: list[str], parse: Any) -> list[tuple[Completion, Any]]:
        """(completion, parsed answer) per user message: greedy first, then up to `retries` sampled re-asks of
        the answers `parse` returns None for."""
        results: list[tuple[Completion, Any]] = [None] * len(chats)  # type: ignore[list-item]
        pending = list(range(len(chats)))
        for attempt in range(self.retries + 1):
            temperature = 0.0 if attempt == 0 else RETRY_TEMPERATURE
            calls = [Call((("user", chats[i]),), temperature, attempt) for i in pending]
            still = []
            for i, completion in zip(pending, self._complete(calls)):
                parsed = parse(completion.text)
                results[i] = (completion, parsed)
                if parsed is None:
                    still.append(i)
            self.counts["unparseable_answers"] += len(still)
            pending = still
            if not pending:
                break
        return results

    def ask(self, values: Sequence[Mapping[str, str]], parse: Callable[[str], Any]) -> list[tuple[Completion, Any]]:
        """(completion, parse(answer)) per dict of slot values, rendered through this judge's template: for
        templates whose answers compare() and rate() do not read (claims, verify, question, agree). Asked as they
        are (greedy, then `retries` sampled re-asks of answers `parse` returns None for, every answer cached);
        what is still None after them is counted in counts["unparseable"] and left to the caller."""
        results = self._ask([self.template.render(**v) for v in values], parse)
        self.counts["asked"] += len(results)
        self.counts["unparseable"] += sum(parsed is None for _, parsed in results)
        return results

    # ----------------------------------------------------------------------------------------- pairwise
    def compare(self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str],
                references: Sequence[str] | None = None) -> list[PairVerdict]:
        """One verdict per (prompt, a, b), a being the first response (see the module docstring)."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} responses")
        if self.template.kind != "pairwise":
            raise RlhfkitError(f"judge template {self.template.name} is pointwise; pairs need a pairwise template")
        orders = [(i, False) for i in range(len(prompts))]
        if self.both_orders:
            orders += [(i, True) for i in range(len(prompts))]
        chats = []
        for i, swapped in orders:
            first, second = (responses_b[i], responses_a[i]) if swapped else (responses_a[i], responses_b[i])
            chats.append(self.template.render(prompt=plain_prompt(prompts[i]), response_a=first, response_b=second,
                                              reference=references[i] if references else ""))
        answers = self._ask(chats, parse_choice)
        verdicts = []
        n = len(prompts)
        for i in range(n):
            straight = answers[i]
            probs = [choice_probability(straight[0].tokens, straight[0].top_logprobs)]
            if self.both_orders:
                swapped = answers[n + i]
                winner, consistent = _combine(straight[1], swapped[1])
                p = choice_probability(swapped[0].tokens, swapped[0].top_logprobs)
                probs.append(None if p is None else 1.0 - p)
                texts = (straight[0].text, swapped[0].text)
            else:
                winner, consistent = FIRST_ORDER.get(straight[1]), None
                texts = (straight[0].text,)
            verdicts.append(PairVerdict(winner, _mean(probs), texts, consistent, None, self.identity,
                                        self.template.identity))
        self.counts["pairs"] += n
        self.counts["unparseable"] += sum(v.winner is None for v in verdicts)
        self.counts["order_inconsistent"] += sum(v.consistent is False for v in verdicts)
        return verdicts

    # ---------------------------------------------------------------------------------------- pointwise
    def rate(self, prompts: Sequence[Prompt], responses: Sequence[str],
             references: Sequence[str] | None = None) -> list[PointVerdict]:
        """A 1-7 score per (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.template.kind != "pointwise":
            raise RlhfkitError(f"judge template {self.template.name} is pairwise; scores need a pointwise template")
        chats = [self.template.render(prompt=plain_prompt(p), response=r, reference=references[i] if references else "")
                 for i, (p, r) in enumerate(zip(prompts, responses))]
        verdicts = [PointVerdict(parsed, expected_score(c.tokens, c.top_logprobs) if parsed is not None else None,
                                 c.text, self.identity, self.template.identity)
                    for c, parsed in self._ask(chats, parse_score)]
        self.counts["rated"] += len(verdicts)
        self.counts["unparseable"] += sum(v.score is None for v in verdicts)
        return verdicts

    def scorer(self) -> Any:
        """This judge as a Scorer (prompts, responses) -> scores: the pointwise `value` of each response. An answer
        still unparseable after the retries stops the run, naming it: a score is never made up."""
        def score(prompts: list[Prompt], responses: list[str]) -> list[float]:
            verdicts = self.rate(prompts, responses)
            bad = [i for i, v in enumerate(verdicts) if v.value is None]
            if bad:
                v = verdicts[bad[0]]
                raise RlhfkitError(f"judge '{self.spec}': {len(bad)} of {len(verdicts)} answers give no score from "
                                   f"1 to 7 after {self.retries} re-asks (e.g. {v.answer[:60]!r} for response "
                                   f"{responses[bad[0]][:40]!r}); raise --judge-retries or use another template")
            return [float(v.value) for v in verdicts]  # type: ignore[arg-type]

        return score


# ------------------------------------------------------------------------------------------ building judges
def make_backend(spec: str, options: JudgeOptions) -> Backend:
    """The backend a judge spec names: `hf:MODEL` (`hf:` alone: SmolLM2-135M-Instruct, offline) or
    `openai:MODEL` with options.judge_url."""
    kind, _, name = spec.partition(":")
    if kind == "hf":
        return HFBackend(name)
    if kind == "openai":
        return OpenAIBackend(name, options.judge_url, options.judge_timeout, options.judge_concurrency,
                             options.judge_http_retries, options.judge_logprobs)
    raise RlhfkitError(f"unknown judge '{spec}': a language-model judge is hf:MODEL or openai:MODEL")


def make_judge(spec: str, options: JudgeOptions | None = None, kind: str = "pairwise",
               backend: Backend | None = None) -> LMJudge:
    """An LMJudge for `--judge hf:MODEL` / `openai:MODEL`, asking `kind` ("pairwise" or "pointwise") questions.
    The template is checked before the model loads or the server is asked anything."""
    options = options or JudgeOptions()
    template = load_template(options.judge_template, kind)
    cache = open_cache(os.path.expanduser(options.judge_cache))
    return LMJudge(spec, backend or make_backend(spec, options), template, cache, options.judge_retries,
                   options.judge_max_tokens, options.judge_both_orders)


def scorer_verdicts(scores_a: Sequence[float], scores_b: Sequence[float], spec: str) -> list[PairVerdict]:
    """Pairwise verdicts of a scorer judge (vader, module:function, rm:PATH): the higher score wins, equal is a tie."""
    return [PairVerdict("a" if a > b else "b" if b > a else "tie", scores=(a, b), judge=spec)
            for a, b in zip(scores_a, scores_b, strict=True)]
