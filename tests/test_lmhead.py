"""The chunked LM head (rlhfkit.lmhead) against the plain logits -> log_softmax -> gather path: values and
gradients, and every caller end to end on a tiny random Llama (RLHFKIT_LM_HEAD=plain vs chunked)."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from rlhfkit import lmhead, ops
from rlhfkit.data import collate
from rlhfkit.data.encode import Encoded
from rlhfkit.data.packing import pack_groups
from rlhfkit.errors import RlhfkitError
from rlhfkit.logprobs import Reference, batch_token_logprobs, response_forward, response_logprobs
from rlhfkit.sampling import Rollout, constrain_logits
from rlhfkit.sft import lm_objective

EOS = 3


def _plain(h, w, b, targets, steps, **constraint):
    z = constrain_logits(F.linear(h, w, b).float(), steps, **constraint)  # (N, V)
    return z.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1), ops.entropy(z)


def test_function_by_hand():
    # V = 2, H = 1: logits [0, 2]. log p(1) = -log(1 + e^-2); at temperature 2 the logits are [0, 1]; with token 1
    # (EOS) forbidden token 0 has probability 1.
    head = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [2.0]]))
    h = torch.ones(3, 1)
    logps, ent = lmhead.head_logprobs(h, head, torch.tensor([1, 1, 0]), torch.tensor([5, 5, 0]),
                                      temperature=1.0, min_new_tokens=1, eos_id=1, with_entropy=True)
    torch.testing.assert_close(logps, torch.tensor([-math.log1p(math.exp(-2)), -math.log1p(math.exp(-2)), 0.0]))
    p = 1 / (1 + math.exp(-2))
    assert abs(float(ent[0]) + p * math.log(p) + (1 - p) * math.log(1 - p)) < 1e-6 and float(ent[2]) == 0.0
    hot, _ = lmhead.head_logprobs(h[:1], head, torch.tensor([1]), temperature=2.0)
    assert abs(hot.item() + math.log1p(math.exp(-1))) < 1e-6


@pytest.mark.parametrize("V", [50, 1000, 5003])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
@pytest.mark.parametrize("bias, frozen", [(False, False), (True, False), (True, True)])
def test_function_matches_plain_values_and_gradients(V, chunk, bias, frozen):
    """frozen: the head needs no gradient (LoRA), the path where the forward folds in d logp / d hidden."""
    torch.manual_seed(V + chunk)
    N, H = 23, 16
    head = torch.nn.Linear(H, V, bias=bias).requires_grad_(not frozen)
    h = torch.randn(N, H, requires_grad=True)
    steps = torch.arange(N) % 6  # EOS forbidden where step < 4
    targets = torch.randint(0, V, (N,))
    targets[(steps < 4) & (targets == EOS)] = EOS + 1  # a forbidden target has log-prob -inf on both paths
    constraint = {"temperature": 0.7, "min_new_tokens": 4, "eos_id": EOS}
    upstream = torch.randn(N)  # a generic downstream gradient, not just ones
    params = [h] + ([] if frozen else [head.weight] + ([head.bias] if bias else []))

    want, want_ent = _plain(h, head.weight, head.bias, targets, steps, **constraint)
    want_grads = torch.autograd.grad((want * upstream).sum(), params)
    got, got_ent = lmhead.head_logprobs(h, head, targets, steps, with_entropy=True, chunk=chunk, **constraint)
    got_grads = torch.autograd.grad((got * upstream).sum(), params)

    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_ent, want_ent.detach(), atol=1e-5, rtol=0)
    assert not got_ent.requires_grad
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_function_gradcheck_float64():
    torch.manual_seed(0)
    h = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    targets, steps = torch.tensor([0, 1, 2, 4, 6]), torch.tensor([0, 1, 2, 3, 4])
    constraint = {"temperature": 0.5, "min_new_tokens": 2, "eos_id": EOS}

    def f(h, w, b):
        return lmhead.ChunkedLogProbs.apply(h, w, b, targets, steps, 2, constraint, False)[0]

    assert torch.autograd.gradcheck(f, (h, w, b))
    assert torch.autograd.gradcheck(lambda h: f(h, w.detach(), b.detach()), (h,))  # frozen head: folded


def test_function_bf16_matmul_in_weight_dtype():
    """bf16 weights: the matmul in bf16 like the plain path, the softmax in fp32."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).bfloat16()
    h = torch.randn(9, 16, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 300, (9,))
    want, _ = _plain(h, head.weight, None, targets, None)
    got, _ = lmhead.head_logprobs(h, head, targets, chunk=4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    gh, = torch.autograd.grad(got.sum(), h)
    wh, = torch.autograd.grad(want.sum(), h)
    assert gh.dtype == torch.bfloat16
    torch.testing.assert_close(gh.float(), wh.float(), atol=1e-2, rtol=1e-2)


def test_function_under_autocast_recomputes_the_forwards_logits():
    """Under bf16 autocast the backward recomputes the forward's bf16 logits (not fp32 ones, which put the
    hidden-state gradient ~1e-3 off), so that gradient is the plain path's exactly; the weight's gradient is
    summed over chunks in fp32 where the plain path rounds one bf16 matmul, hence the looser tolerance."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 2000, bias=False)
    h = (3 * torch.randn(40, 32)).requires_grad_()
    targets = torch.randint(0, 2000, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = _plain(h, head.weight, None, targets, None)
        got, _ = lmhead.head_logprobs(h, head, targets, chunk=16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got_h, got_w = torch.autograd.grad(got.sum(), [h, head.weight])
    want_h, want_w = torch.autograd.grad(want.sum(), [h, head.weight])
    torch.testing.assert_close(got_h, want_h, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=0.1, rtol=1e-2)


# --------------------------------------------------------------------------------------------- policy
def _llama(vocab: int = 301, tie: bool = True, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie, attn_implementation="sdpa", **extra)
    return LlamaForCausalLM(config)


def test_head_for_policy(monkeypatch):
    model = _llama()
    monkeypatch.setenv(lmhead.MODE_ENV, "chunked")
    assert lmhead.head_for(model) is model.lm_head
    assert lmhead.head_for(model, top_p=0.9) is None  # nucleus truncation is not per token
    assert lmhead.head_for(torch.nn.Linear(2, 2)) is None  # no get_output_embeddings
    capped = _llama()
    capped.config.final_logit_softcapping = 30.0
    assert lmhead.head_for(capped) is None
    handle = model.register_forward_hook(lambda module, inputs, output: output)  # it may read the logits
    assert lmhead.head_for(model) is None
    handle.remove()
    handle = model.lm_head.register_forward_pre_hook(lambda module, inputs: inputs)
    assert lmhead.head_for(model) is None
    handle.remove()
    assert lmhead.head_for(model) is model.lm_head
    monkeypatch.setenv(lmhead.MODE_ENV, "plain")
    assert lmhead.head_for(model) is None
    monkeypatch.setenv(lmhead.MODE_ENV, "fast")
    with pytest.raises(RlhfkitError, match="RLHFKIT_LM_HEAD"):
        lmhead.head_for(model)


def test_head_for_peft_and_ddp_wrappers(monkeypatch):
    from rlhfkit.config import LoRAConfig
    from rlhfkit.models import apply_lora

    monkeypatch.setenv(lmhead.MODE_ENV, "chunked")
    model = _llama()
    peft = apply_lora(model, LoRAConfig(r=4, target_modules=("q_proj", "v_proj")))
    assert lmhead.head_for(peft) is model.lm_head
    wrapped = torch.nn.Module()
    wrapped.module = peft  # how DDP holds the model
    assert lmhead.head_for(wrapped) is model.lm_head
    lora_head = apply_lora(_llama(tie=False), LoRAConfig(r=4, target_modules=("q_proj", "lm_head")))
    assert lmhead.head_for(lora_head) is None  # an adapted head is not a plain Linear


# ------------------------------------------------------------------------------------------- end to end
def _both(monkeypatch, model, fn):
    """fn(model) -> (tensor to compare, scalar to backpropagate) under the plain and the chunked head."""
    results = []
    for mode in ("plain", "chunked"):
        monkeypatch.setenv(lmhead.MODE_ENV, mode)
        model.zero_grad()
        value, loss = fn(model)
        grads = {}
        if loss is not None:
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((value.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    return want_grads


def _sequences(lengths, prompt, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(4, 300, (n,), generator=g).tolist()
        out.append(Encoded(ids, [0] * prompt + [1] * (n - prompt)))
    return out


def test_lm_objective_chunked_equals_plain(monkeypatch):
    batch = collate(_sequences([12, 7, 9], prompt=3), pad_id=0)  # right padding, prompt tokens unscored
    grads = _both(monkeypatch, _llama(tie=False), lambda m: (lm_objective(m, batch)[0],) * 2)
    assert grads["lm_head.weight"].abs().sum() > 0 and grads["model.embed_tokens.weight"].abs().sum() > 0


def test_lm_objective_lora_chunked_equals_plain(monkeypatch):
    """A frozen head (LoRA): only the adapters get gradients, through the folded d logp / d hidden."""
    from rlhfkit.config import LoRAConfig
    from rlhfkit.models import apply_lora

    model = apply_lora(_llama(), LoRAConfig(r=4, target_modules=("q_proj", "v_proj")))
    batch = collate(_sequences([12, 7, 9], prompt=3), pad_id=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B = 0 at init would give A no gradient
    grads = _both(monkeypatch, model, lambda m: (lm_objective(m, batch)[0],) * 2)
    assert grads and all("lora_" in name for name in grads)


def test_batch_token_logprobs_token_and_prefix_batches(monkeypatch):
    model = _llama()
    chosen, rejected = _sequences([11, 8, 10], prompt=4, seed=1), _sequences([9, 12, 6], prompt=4, seed=2)
    for c, r in zip(chosen, rejected):
        r.input_ids[:4] = c.input_ids[:4]  # a shared prompt
    rows = collate(chosen + rejected, pad_id=0)
    packed = pack_groups([[c, r] for c, r in zip(chosen, rejected)], pad_id=0)

    def seq(batch):
        def fn(m):
            logps, mask = batch_token_logprobs(m, batch)
            total = ops.masked_sum(logps, mask, dim=-1)  # (2B,)
            return total, (total * torch.arange(1.0, 7.0)).sum()
        return fn

    _both(monkeypatch, model, seq(rows))
    _both(monkeypatch, model, seq(packed))
    shared_rows = pack_groups([[c, r] for c, r in zip(chosen, rejected)], pad_id=0, row_tokens=40)
    assert shared_rows.input_ids.shape[0] < 3  # padding-free: groups share rows
    _both(monkeypatch, model, seq(shared_rows))
    ref = Reference.of(model)
    _both(monkeypatch, model, lambda m: (ref.sequence_logps(packed), None))


def _rollout():
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # left-padded to P = 5
    P, A = 5, 6
    prompt_ids = torch.zeros(3, P, dtype=torch.long)
    prompt_mask = torch.zeros(3, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
    response_ids = torch.tensor([[20, 21, 22, EOS, 0, 0], [30, 31, 32, 33, 34, 35], [40, 41, 42, 43, EOS, 0]])
    response_mask = (torch.arange(A)[None] < torch.tensor([[4], [6], [5]])).long()
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, torch.zeros(3, A), torch.ones(3).bool())


@pytest.mark.parametrize("temperature, min_new", [(1.0, 0), (0.7, 3)])
def test_response_forward_and_logprobs(monkeypatch, temperature, min_new):
    model = _llama()
    value_head = torch.nn.Linear(32, 1)
    r = _rollout()
    P, A = r.prompt_ids.shape[1], r.response_ids.shape[1]
    constraint = {"temperature": temperature, "min_new_tokens": min_new, "eos_id": EOS}

    def forward(m):
        logps, values, ent = response_forward(m, r.input_ids, r.attention_mask, P, A, temperature, value_head,
                                              min_new, EOS)
        assert not ent.requires_grad and ent.shape == (3, A) and (ent[r.response_mask.bool()] > 0).all()
        return torch.stack([logps, values, ent]), (logps * r.response_mask).sum() + values.sum()

    _both(monkeypatch, model, forward)
    _both(monkeypatch, model, lambda m: (response_logprobs(m, r, 2, **constraint), None))


def test_peak_memory_ratio(tmp_path):
    """Forward + backward at N = 2048 positions, V = 32768, H = 64: the chunked head's extra peak memory (each path
    in its own process) is well under the plain path's (N, V) logits. The peak is the kernel's high-water mark
    (VmHWM), reset right before the measured step (/proc/self/clear_refs), so whatever importing torch touched
    earlier cannot hide it."""
    script = textwrap.dedent("""
        import sys, torch
        from rlhfkit import lmhead, ops

        def status(field):  # KiB
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1])

        torch.manual_seed(0)
        N, V, H = 2048, 32768, 64
        head = torch.nn.Linear(H, V, bias=False)
        h = torch.randn(N, H, requires_grad=True)
        ids = torch.randint(0, V, (1, N + 1))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        before = status("VmRSS")
        if sys.argv[1] == "plain":
            logps = ops.token_logprobs(head(h)[None], ids[:, :N])  # (1, N-1)
        else:
            logps, _ = lmhead.head_logprobs(h, head, ids[0, 1:])  # (N,)
        logps.sum().backward()
        print(status("VmHWM") - before)
    """)
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    peaks = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for mode in ("plain", "chunked")}
    assert peaks["plain"] > 100_000  # KiB: the (N, V) fp32 logits alone are 256 MiB, so the plain path was measured
    assert peaks["chunked"] / peaks["plain"] < 0.6, peaks
