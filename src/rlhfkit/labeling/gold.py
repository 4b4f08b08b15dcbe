"""Gold scorers: functions that give every (prompt, response) a number, so preferences can be labelled
without people.

A scorer is `Callable[[list[Prompt], list[str]], list[float]]`: prompts and responses of equal length N in, N
finite scores out (higher = better). A prompt is a string or a conversation (`rlhfkit.data.chat`): a reward model
renders it with its template; VADER and `module:function` scorers get text (a conversation in the plain template,
`rlhfkit.data.plain_prompt`). `make_scorer(spec)` builds one from a command-line spec:

    vader              VADER compound sentiment of prompt + " " + response, in [-1, 1] (the gold reward of the
                       sentiment experiment: the DPO paper scores prefix + completion with its classifier)
    module:function    any importable function with the scorer signature
    rm:PATH            a reward model (rlhfkit's, or any one-label sequence-classification model), loaded by
                       `rlhfkit.reward.load_reward_scorer(PATH)`
    hf:MODEL           a language model asked for a 1-7 score (`rlhfkit.judges`, pointwise); `hf:` alone is the
    openai:MODEL       offline SmolLM2-135M-Instruct; openai: is any OpenAI-compatible server (--judge-url)

Where two responses are compared (label auto's pairs, win rates, online DPO), a language model is asked the
pairwise question instead (`rlhfkit.judges.LMJudge.compare`); a scorer compares by score.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from collections.abc import Sequence

from rlhfkit.data.chat import Prompt, plain_prompt
from rlhfkit.errors import DataError, MissingPackageError, RlhfkitError
from rlhfkit.judges.judge import JudgeOptions, is_lm_judge, make_judge
from rlhfkit.protocols import Scorer

SPELLINGS = "'vader', 'module:function', 'rm:PATH', 'hf:MODEL' or 'openai:MODEL'"


@functools.cache
def _vader_analyzer():
    """One SentimentIntensityAnalyzer per process: building it parses the lexicon (~tens of ms)."""
    if importlib.util.find_spec("vaderSentiment") is None:
        raise MissingPackageError("vaderSentiment", "the VADER gold reward", no_deps=False)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_score(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """VADER compound score of prompt + " " + response for each pair; (N,) floats in [-1, 1]."""
    analyzer = _vader_analyzer()
    return [analyzer.polarity_scores(f"{plain_prompt(p)} {r}")["compound"]
            for p, r in zip(prompts, responses, strict=True)]


def scorer_source(spec: str) -> str:
    """What kind of labeler a spec is, for provenance: "rm" for a reward model, "ai" for a language model, "gold"
    for a function."""
    return "rm" if spec.startswith("rm:") else "ai" if is_lm_judge(spec) else "gold"


def make_scorer(spec: str, options: JudgeOptions | None = None) -> Scorer:
    """The scorer named by `spec` (see the module docstring); RlhfkitError if it cannot be built. options: the
    `--judge-*` settings of a language model or reward model."""
    options = options or JudgeOptions()
    if spec == "vader":
        _vader_analyzer()  # fail now, not after sampling, if the package is missing
        return vader_score
    if spec.startswith("rm:"):
        return _reward_model_scorer(spec[3:], options.judge_norm)
    if is_lm_judge(spec):
        return make_judge(spec, options, "pointwise").scorer()
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise RlhfkitError(f"unknown judge '{spec}': expected {SPELLINGS}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RlhfkitError(f"judge '{spec}': cannot import module '{module_name}' ({err})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise RlhfkitError(f"judge '{spec}': module '{module_name}' has no function '{func_name}'")
    return functools.wraps(func)(lambda prompts, responses: func([plain_prompt(p) for p in prompts], responses))


def _reward_model_scorer(path: str, norm_reference: str = "") -> Scorer:
    try:
        from rlhfkit.reward import load_reward_scorer
    except ImportError as err:
        message = f"judge 'rm:{path}' needs rlhfkit.reward.load_reward_scorer, which is not available ({err})"
        raise RlhfkitError(message) from None
    return load_reward_scorer(path, norm_reference=norm_reference or None)


def checked_scores(scorer: Scorer, prompts: list[Prompt], responses: list[str], spec: str,
                   where: Sequence[tuple[str, int] | None] | None = None) -> list[float]:
    """Call the scorer and insist on N finite numbers: a user's function gets a clear error, not a crash later.

    where: the (file, line) each response's record came from, if any; a non-finite score then names it, so
    the record that made a user's function return NaN can be found."""
    scores = [float(s) for s in scorer(prompts, responses)]
    if len(scores) != len(responses):
        raise RlhfkitError(f"judge '{spec}' returned {len(scores)} scores for {len(responses)} responses")
    bad = next((i for i, s in enumerate(scores) if not math.isfinite(s)), None)
    if bad is None:
        return scores
    what = f"judge '{spec}' returned {scores[bad]} for response {responses[bad][:40]!r}"
    source = where[bad] if where is not None else None
    if source is not None:
        raise DataError(*source, what)
    raise RlhfkitError(f"{what} to prompt {plain_prompt(prompts[bad])[:40]!r}")
