"""Best-of-N sampling: draw N completions per prompt from a policy, keep the one a scorer likes best.

A strong, training-free baseline for RLHF (Stiennon et al. 2020; Nakano et al. 2021): its KL to the policy is
at most log N - (N - 1) / N nats, so it belongs on every reward-vs-KL frontier next to PPO and DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Scorer = Callable[[list[str], list[str]], list[float]]


@dataclass
class BestOfN:
    """The chosen completion of one prompt, and every candidate it was chosen from."""

    prompt: str
    response: str
    score: float
    responses: list[str]
    scores: list[float]


def best_of_n(model: Any, tokenizer: Any, prompts: list[str], scorer: Scorer, n: int, max_new_tokens: int = 32,
              temperature: float = 1.0, top_p: float = 1.0, min_new_tokens: int = 0, seed: int = 0,
              batch_size: int = 64, max_prompt_length: int = 64, spec: str = "scorer") -> list[BestOfN]:
    """For each prompt, sample n completions (rlhfkit.generation.sample, same seed -> same candidates), score
    them all with `scorer(prompts, responses)` and keep the highest (the first one on ties)."""
    from rlhfkit.data import encode_prompt
    from rlhfkit.generation import decode_responses, sample
    from rlhfkit.labeling.gold import checked_scores

    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1, got {n}")
    ids = [encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    rollout = sample(model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, n, max_new_tokens, temperature,
                     top_p, min_new_tokens, seed, batch_size)
    texts = decode_responses(tokenizer, rollout)  # n consecutive rows per prompt
    scores = checked_scores(scorer, [p for p in prompts for _ in range(n)], texts, spec)
    out = []
    for i, prompt in enumerate(prompts):
        cands, sc = texts[i * n: (i + 1) * n], scores[i * n: (i + 1) * n]
        best = max(range(n), key=lambda j: sc[j])  # max() keeps the first of equal scores
        out.append(BestOfN(prompt, cands[best], sc[best], cands, sc))
    return out
