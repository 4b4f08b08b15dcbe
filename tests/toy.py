"""Toy review-like text shared by tests (import it as `from toy import ...`)."""

from __future__ import annotations

WORDS = ("the movie was great terrible fun boring acting plot film i loved hated it a story good bad "
         "wonderful awful best worst").split()


def toy_texts(n: int = 200, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
