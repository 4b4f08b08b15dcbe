"""Padding-free packing: several groups (SFT examples, DPO pairs, rankings) per row. The row assignment and layout
by hand, the block-diagonal mask by hand, and exactness against right-padded rows per sequence (log-probs,
rewards, losses and gradients) with lengths that differ."""

from __future__ import annotations

import pytest
import torch

from rlhfkit import ops
from rlhfkit.data import Encoded, collate
from rlhfkit.data.packing import assign_rows, attention_bias, pack_groups
from rlhfkit.logprobs import batch_token_logprobs, packed_token_logprobs


def enc(ids: list[int], prompt: int) -> Encoded:
    return Encoded(list(ids), [0] * prompt + [1] * (len(ids) - prompt))


def test_assign_rows_by_hand():
    assert assign_rows([5, 3, 4, 2], None) == [0, 1, 2, 3]  # one group per row
    assert assign_rows([5, 3, 4, 2], 0) == [0, 2, 1, 2]  # rows of 5: 5 | 4 | 3 + 2
    assert assign_rows([5, 3, 4, 2], 8) == [0, 0, 1, 1]  # rows of 8: 5 + 3 | 4 + 2
    assert assign_rows([2, 9, 3], 4) == [1, 0, 1]  # a group wider than row_tokens widens every row to its width


def test_padding_free_layout_by_hand():
    groups = [[enc([1, 2, 3, 4], 2), enc([1, 2, 5], 2)],  # width 2 + 2 + 1 = 5
              [enc([7, 8], 1), enc([7, 9], 1)],  # width 1 + 1 + 1 = 3
              [enc([6, 5, 4], 1), enc([6, 3], 1)]]  # width 1 + 2 + 1 = 4
    batch = pack_groups(groups, pad_id=0, row_tokens=0)  # rows of 5 columns: [g0], [g2], [g1]
    assert batch.rows.tolist() == [0, 2, 1]
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 5, 4, 3, 0], [7, 8, 9, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 1, 0], [0, 1, 1, 0, 0]]
    assert batch.segments.tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 2, -1], [0, 1, 2, -1, -1]]
    assert batch.docs.tolist() == [[0, 0, 0, 0, 0], [2, 2, 2, 2, -1], [1, 1, 1, -1, -1]]
    assert len(batch) == 3 and batch.attention_mask.sum().item() == 12  # 3 groups in 3 rows, 12 real columns

    two = pack_groups(groups[1:], pad_id=0, row_tokens=8)  # both short groups share one row
    assert two.rows.tolist() == [0, 0] and two.input_ids.tolist() == [[7, 8, 9, 6, 5, 4, 3]]
    assert two.position_ids.tolist() == [[0, 1, 1, 0, 1, 2, 1]]  # positions restart per group
    assert two.docs.tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    assert two.score_cols[:, 1].tolist() == [[3, 4], [3, 0]]  # group 1 starts at column 3 (0: no token there)
    assert two.last_cols.tolist() == [[1, 5], [2, 6]]


def test_block_diagonal_mask_by_hand():
    segments = torch.tensor([[0, 1, 2, 0, 0, 1, -1]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    allowed = (attention_bias(segments, torch.float32, docs)[0, 0] == 0).int()
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],  # the second tail sees its prefix, not the first tail
        [0, 0, 0, 1, 0, 0, 0],  # the next group sees nothing of the one before it
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]


def groups_of(G: int, n: int, seed: int) -> list[list[Encoded]]:
    """n groups of G sequences with different prompt and response lengths (prompts shared within a group)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda k: torch.randint(3, 90, (k,), generator=g).tolist()  # noqa: E731
    out = []
    for i in range(n):
        prompt = rand(2 + (3 * i) % 5)
        out.append([enc(prompt + rand(1 + (2 * i + 3 * k) % 7), len(prompt)) for k in range(G)])
    return out


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def lm(request):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      attn_implementation=request.param)
    return LlamaForCausalLM(cfg).eval()


def padded(lm, groups):
    """Reference: every sequence its own right-padded row -> per-token log-probs (G, B, L)."""
    G, B = max(len(x) for x in groups), len(groups)
    flat = [groups[b][g] for g in range(G) for b in range(B)]
    batch = collate(flat, pad_id=0)
    logps = ops.token_logprobs(lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                               batch.input_ids) * batch.loss_mask[:, 1:]
    L = max(len(e.input_ids) for e in flat) - 1
    return logps[:, :L].reshape(G, B, L)


def grads(model, value):
    model.zero_grad()
    value.sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("G, row_tokens", [(1, 0), (1, 40), (2, 0), (2, 64), (3, 48)])
def test_padding_free_equals_padded_per_sequence(lm, G, row_tokens):
    """G = 1: SFT examples; 2: DPO pairs; 3: rankings. Values and every parameter's gradient."""
    groups = groups_of(G, 7, seed=G)
    batch = pack_groups(groups, pad_id=0, row_tokens=row_tokens)
    assert batch.input_ids.shape[0] < len(groups)  # groups really share rows
    got, _ = packed_token_logprobs(lm, batch)
    torch.testing.assert_close(got, padded(lm, groups), atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(lm, packed_token_logprobs(lm, batch)[0]), grads(lm, padded(lm, groups))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    padded_tokens = len(groups) * G * max(len(e.input_ids) for grp in groups for e in grp)
    assert batch.input_ids.numel() < padded_tokens  # and it runs fewer columns than padding would


def test_dpo_loss_padding_free_equals_padded(lm):
    from rlhfkit.dpo.objective import PAIR_LOSSES, Pair, collate_pairs, preference_objective
    from rlhfkit.dpo.config import DPOConfig
    from rlhfkit.logprobs import Reference

    pairs = [Pair(chosen, rejected) for chosen, rejected in groups_of(2, 6, seed=11)]
    cfg = DPOConfig()
    objective = preference_objective(PAIR_LOSSES["dpo"](cfg), Reference(lm, lm), beta=cfg.beta)
    packed, rows = collate_pairs(pairs, 0, shared_prefix=True), collate_pairs(pairs, 0, shared_prefix=False)
    assert packed.input_ids.shape[0] < len(pairs)
    (loss_a, _), (loss_b, _) = objective(lm, packed), objective(lm, rows)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads(lm, objective(lm, packed)[0]), grads(lm, objective(lm, rows)[0])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    token_logps, mask = batch_token_logprobs(lm, packed)  # (2B, L): chosen rows first, as the padded batch
    assert token_logps.shape[0] == 2 * len(pairs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_reward_padding_free_equals_padded(attn):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhfkit.reward.model import packed_rewards, reward_at_last_token
    from rlhfkit.reward.groups import Group
    from rlhfkit.reward.train import collate_groups

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=1,
                      pad_token_id=0, attn_implementation=attn)
    rm = LlamaForSequenceClassification(cfg).eval()
    raw = groups_of(3, 6, seed=5)
    raw[2] = raw[2][:2]  # a group with fewer responses shares the batch
    groups = [Group(examples) for examples in raw]
    batch = collate_groups(groups, 0, shared_prefix=True)
    assert batch.input_ids.shape[0] < len(groups)
    got = packed_rewards(rm, batch)  # (G, B)
    for b, examples in enumerate(raw):
        alone = collate(examples, pad_id=0)
        want = reward_at_last_token(rm, alone.input_ids, alone.attention_mask)  # (K,)
        torch.testing.assert_close(got[: len(examples), b], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["chunked", "plain"])
def test_sft_loss_padding_free_equals_padded(lm, head, monkeypatch):
    """What `rlhfkit sft` trains on for a model with 4D-mask attention: the same loss and gradients as padded rows."""
    from rlhfkit.sft import _collate_for, lm_objective

    class Tok:
        pad_token_id = 0

    monkeypatch.setenv("RLHFKIT_LM_HEAD", head)
    examples = [grp[0] for grp in groups_of(1, 9, seed=4)]
    packed, rows = _collate_for(Tok(), padding_free=True)(examples), _collate_for(Tok())(examples)
    assert packed.input_ids.shape[0] < len(examples) and packed.attention_mask.sum() == rows.attention_mask.sum()
    (loss_a, m_a), (loss_b, m_b) = lm_objective(lm, packed), lm_objective(lm, rows)
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    assert m_a == m_b
    for a, b in zip(grads(lm, lm_objective(lm, packed)[0]), grads(lm, lm_objective(lm, rows)[0])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
