import math

import torch

from rlhfkit import ops


def reference_sequence_logprob(logits, ids, mask):
    """Token-by-token Python loop: sum of log softmax(logits[t-1])[ids[t]] over t >= 1 with mask[t] == 1."""
    out = []
    for b in range(ids.shape[0]):
        total = 0.0
        for t in range(1, ids.shape[1]):
            if mask[b, t]:
                row = logits[b, t - 1].double()
                total += float(row[ids[b, t]] - torch.logsumexp(row, 0))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_sequence_logprobs_matches_token_loop_right_and_left_padding():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    right = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 0]])
    left = right.flip(-1)
    for mask in (right, left):
        got = ops.sequence_logprobs(logits, ids, mask)
        assert got.dtype == torch.float32 and got.shape == (B,)
        torch.testing.assert_close(got.double(), reference_sequence_logprob(logits, ids, mask), atol=1e-5, rtol=0)


def test_token_logprobs_chunking_is_exact_and_handles_bf16():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 9, 50, generator=g)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(ops.token_logprobs(logits, ids, chunk_size=3), full)
    low = ops.token_logprobs(logits.bfloat16(), ids)
    assert low.dtype == torch.float32


def test_first_token_never_counts():
    logits = torch.zeros(1, 3, 4)
    ids = torch.tensor([[1, 2, 3]])
    only_first = torch.tensor([[1, 0, 0]])
    assert ops.sequence_logprobs(logits, ids, only_first).item() == 0.0
    all_on = torch.ones(1, 3, dtype=torch.long)
    assert math.isclose(ops.sequence_logprobs(logits, ids, all_on).item(), 2 * math.log(0.25), rel_tol=1e-6)


def test_masked_reductions_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 5.0, 7.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert ops.masked_sum(x, m).item() == 6.0
    assert ops.masked_mean(x, m).item() == 2.0
    torch.testing.assert_close(ops.masked_mean(x, m, dim=1), torch.tensor([1.5, 3.0]))
    # values 1, 2, 3: mean 2, unbiased var 1
    assert ops.masked_var(x, m).item() == 1.0
    w = ops.masked_whiten(x, m)
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-4, rtol=0)
    assert ops.masked_mean(x, torch.zeros_like(m)).item() == 0.0

