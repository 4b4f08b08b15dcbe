"""Language-model judges: AI feedback for labelling preferences (RLAIF), win rates and online training.

    judge = make_judge("hf:", JudgeOptions())          # SmolLM2-135M-Instruct, offline; or "openai:gpt-4o-mini"
    verdicts = judge.compare(prompts, responses_a, responses_b)   # PairVerdict: winner a / b / tie / None
    scores = make_judge("hf:", kind="pointwise").scorer()(prompts, responses)   # 1-7, expected from log-probs

On the command line a judge is one spelling wherever a labeler or judge is accepted: `--judge hf:MODEL` (a local
model through transformers) or `--judge openai:MODEL --judge-url URL` (any OpenAI-compatible server), next to the
scorers `vader`, `module:function` and `rm:PATH` (`rlhfkit.labeling.gold`). The `--judge-*` options are
`JudgeOptions`.

    answers    parsing an answer; P(A) vs P(B) and the expected score from log-probs
    templates  the prompt templates (built-in files, or the user's), checked for their fields
    cache      the SQLite judgement cache
    backends   HFBackend, OpenAIBackend
    judge      LMJudge (both orders, retries, counts), verdicts, JudgeOptions, make_judge
    agreement  `rlhfkit eval judge-agreement`: a judge against gold preferences, and gold against gold
"""

from rlhfkit.judges.answers import choice_probability, expected_score, parse_choice, parse_score
from rlhfkit.judges.backends import Call, Completion, HFBackend, OpenAIBackend
from rlhfkit.judges.cache import JudgementCache
from rlhfkit.judges.judge import (JudgeOptions, LMJudge, PairVerdict, PointVerdict, is_lm_judge, make_judge,
                                  scorer_verdicts)
from rlhfkit.judges.templates import Template, load_template

__all__ = [
    "Call", "Completion", "HFBackend", "JudgeOptions", "JudgementCache", "LMJudge", "OpenAIBackend", "PairVerdict",
    "PointVerdict", "Template", "choice_probability", "expected_score", "is_lm_judge", "load_template",
    "make_judge", "parse_choice", "parse_score", "scorer_verdicts",
]
