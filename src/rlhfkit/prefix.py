"""Former home of the shared-prefix rows, kept so `from rlhfkit.prefix import ...` keeps working.

The row layout (one row per pair or ranking, the shared prefix laid out once, a 4D attention mask) lives in
`rlhfkit.data.packing`; the forward passes over it (hidden states, per-token log-probs) in `rlhfkit.logprobs`.
"""

from __future__ import annotations

from rlhfkit.data.packing import PrefixBatch, attention_bias, common_prefix_length, pack_groups, supports_shared_prefix
from rlhfkit.logprobs import packed_hidden_states as hidden_states
from rlhfkit.logprobs import packed_token_logprobs as token_logps

collate_groups = pack_groups

__all__ = ["PrefixBatch", "attention_bias", "collate_groups", "common_prefix_length", "hidden_states", "pack_groups",
           "supports_shared_prefix", "token_logps"]
