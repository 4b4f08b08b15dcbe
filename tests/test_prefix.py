"""Shared-prefix packing: the layout by hand, the mask by hand, and exactness against separate rows (log-probs
and gradients) on tiny random Llama models with both attention implementations."""

from __future__ import annotations

import pytest
import torch

from rlhfkit import ops
from rlhfkit.data import Encoded, collate
from rlhfkit.prefix import attention_bias, collate_groups, common_prefix_length, hidden_states, token_logps


def enc(ids: list[int], prompt: int) -> Encoded:
    return Encoded(list(ids), [0] * prompt + [1] * (len(ids) - prompt))


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # every side keeps a tail of its own
    assert common_prefix_length([[7, 1], [8, 1]]) == 0
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 8]]) == 2


def test_layout_by_hand():
    batch = collate_groups([[enc([1, 2, 3, 4, 5], 2), enc([1, 2, 3, 6], 2)],
                            [enc([9, 4], 1), enc([8, 4, 4], 1)]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [9, 4, 8, 4, 4, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 0, 1, 2, 0]]
    assert batch.segments.tolist() == [[0, 0, 0, 1, 1, 2], [1, 1, 2, 2, 2, -1]]
    # side g, token t is scored from the column holding token t-1
    assert batch.score_cols[0].tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    assert batch.score_cols[1].tolist() == [[0, 1, 2, 0], [2, 3, 0, 0]]
    assert batch.targets[0].tolist() == [[2, 3, 4, 5], [4, 0, 0, 0]]
    assert batch.targets[1].tolist() == [[2, 3, 6, 0], [4, 4, 0, 0]]
    assert batch.loss_mask[0].tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert batch.loss_mask[1].tolist() == [[0, 1, 1, 0], [1, 1, 0, 0]]
    assert batch.last_cols.tolist() == [[4, 1], [5, 4]]
    assert batch.lengths.tolist() == [[5, 2], [4, 3]]
    assert batch.attention_mask.sum().item() == 11  # vs 5 + 4 + 2 + 3 = 14 as separate rows


def test_mask_by_hand():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = (attention_bias(segments, torch.float32)[0, 0] == 0).int()
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # the second tail sees the prefix, not the first tail
        [0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]


def random_groups(G: int, n_groups: int, seed: int) -> list[list[Encoded]]:
    """Groups with a shared prompt (sometimes a differing one), shared first response tokens, varied lengths."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(3, 90, (n,), generator=g).tolist()  # noqa: E731
    groups = []
    for i in range(n_groups):
        prompt = rand(2 + i % 4)
        lead = rand(i % 2)  # every side starts with the same token(s) half the time
        group = [enc(prompt + lead + rand(1 + (i + k) % 5), len(prompt)) for k in range(G)]
        if i == 1:  # a truncated prompt on one side: only the part both share is shared
            group[0] = enc(prompt[1:] + rand(3), len(prompt) - 1)
        groups.append(group)
    return groups


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      attn_implementation=request.param)
    return LlamaForCausalLM(cfg).eval()


def separate(model, groups):
    """Reference: every sequence its own right-padded row; per-token log-probs (G, B, L) like token_logps."""
    G, B = len(groups[0]), len(groups)
    flat = [groups[b][g] for g in range(G) for b in range(B)]
    batch = collate(flat, pad_id=0)
    logps = ops.token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                               batch.input_ids) * batch.loss_mask[:, 1:]
    L = max(len(e.input_ids) for e in flat) - 1
    return logps[:, :L].reshape(G, B, L)


@pytest.mark.parametrize("G", [2, 3])
def test_token_logps_and_gradients_equal_separate_rows(model, G):
    groups = random_groups(G, 5, seed=G)
    packed = collate_groups(groups, pad_id=0)
    got, mask = token_logps(model, packed)
    want = separate(model, groups)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert packed.attention_mask.sum() < sum(len(e.input_ids) for grp in groups for e in grp)

    def grads(value):
        model.zero_grad()
        value.sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(token_logps(model, packed)[0]), grads(separate(model, groups))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_hidden_state_at_each_last_token_equals_separate_rows(model):
    groups = random_groups(3, 4, seed=7)
    packed = collate_groups(groups, pad_id=0)
    hidden = hidden_states(model.model, packed)  # (B, T, H)
    for b, group in enumerate(groups):
        for g, e in enumerate(group):
            alone = model.model(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[b, packed.last_cols[g, b]], alone, atol=1e-5, rtol=1e-5)
