"""The call shapes stages hand each other, named once (a bottom-floor module: no rlhfkit imports).

    Scorer     (prompts, responses) -> one finite score per pair, higher = better: gold functions, reward
               models, `module:function` specs (built by `rlhfkit.labeling.gold.make_scorer`); a prompt is a
               string or a conversation (a list of {"role", "content"} messages), a response a string
    Objective  (model, batch) -> (scalar loss, metrics): what `rlhfkit.loop.fit` minimises
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Scorer = Callable[[list[Any], list[str]], list[float]]
Objective = Callable[[Any, Any], "tuple[Any, dict[str, float]]"]
