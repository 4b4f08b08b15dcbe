"""The KV-cached sampler against a no-cache decode, its log-probs against a fresh forward, and the RL step that
takes the rollout's log-probs as its old log-probs (one epoch, no value head) without a second policy forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhfkit import decode, generation, ppo
from rlhfkit.config import parse
from rlhfkit.data import encode_prompt, read_located, write_jsonl
from rlhfkit.generation import TorchSampler, response_logprobs, sample
from rlhfkit.loop import make_accelerator
from rlhfkit.ops import positions

PROMPTS = ["a", "the movie was great fun and the plot", "i loved it"]


def model_with(tiny_tokenizer, tiny_arch, attn: str):
    from rlhfkit.models import build_tiny

    model = build_tiny(tiny_tokenizer, tiny_arch, seed=0).eval()
    model.config._attn_implementation = attn
    return model


@pytest.fixture(params=[("sdpa", True, True), ("eager", True, True), ("sdpa", True, False), ("sdpa", False, True)],
                ids=["sdpa-lean", "eager-lean", "sdpa", "2d-mask"])
def model(request, tiny_tokenizer, tiny_arch, monkeypatch):
    """Every decode path of the sampler: the lean Llama step (`rlhfkit.decode`) under sdpa and eager, transformers'
    forward with a 4D additive mask (lean step off), and the 2D mask that transformers turns into each step's mask
    (the path for flash attention and sliding-window layers)."""
    attn, additive, lean = request.param
    if not additive:
        monkeypatch.setattr(generation, "_takes_additive_mask", lambda config: False)
    if not lean:
        monkeypatch.setenv("RLHFKIT_LEAN_DECODE", "0")
    model = model_with(tiny_tokenizer, tiny_arch, attn)
    assert (decode.lean_model(model) is model) == (additive and lean)
    return model


@torch.no_grad()
def greedy_without_cache(model, prompt: list[int], steps: int, eos_id: int) -> list[int]:
    """argmax of a full forward over the growing, unpadded sequence, one token at a time, stopping at EOS."""
    ids = list(prompt)
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]  # (V,)
        ids.append(int(logits.argmax()))
        if ids[-1] == eos_id:
            break
    return ids[len(prompt):]


def test_greedy_equals_a_no_cache_decode_with_left_padding_and_eos(model, tiny_tokenizer):
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS]
    free = [greedy_without_cache(model, p, 10, eos_id=-1) for p in prompts]  # no EOS: 10 tokens each
    eos = free[0][2]  # a token row 0 emits at step <= 2: row 0 ends early, the others when (if) they reach it
    expected = [greedy_without_cache(model, p, 10, eos) for p in prompts]
    assert min(map(len, expected)) <= 3 and max(map(len, expected)) > 3  # rows do stop at different steps
    r = sample(model, prompts, tiny_tokenizer.pad_token_id, eos, max_new_tokens=10, temperature=0.0)
    assert r.response_ids.shape[1] == max(map(len, expected))  # cut at the last row's EOS
    for row, want in enumerate(expected):
        assert r.response_ids[row, : len(want)].tolist() == want
        assert r.lengths[row] == len(want) and bool(r.ended[row]) == (want[-1] == eos)
        assert (r.response_ids[row, len(want):] == tiny_tokenizer.pad_token_id).all()


def test_logprobs_equal_a_fresh_forward_under_the_constraint(model, tiny_tokenizer):
    """Temperature 0.7 and EOS forbidden for 4 tokens: the sampled log-probs are those of the constrained,
    renormalised distribution, as a fresh (no-cache, full-sequence) forward gives them."""
    tok, kw = tiny_tokenizer, dict(temperature=0.7, min_new_tokens=4)
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    r = sample(model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=2, max_new_tokens=9, seed=1, **kw)
    assert r.prompt_mask.sum(-1).unique().numel() == 3  # left padding of three widths
    with torch.no_grad():
        fresh = response_logprobs(model, r, eos_id=tok.eos_token_id, **kw)  # (N, A)
    torch.testing.assert_close(r.logprobs, fresh, atol=1e-5, rtol=0)


def test_checking_for_the_end_every_k_steps_gives_the_same_rollout(tiny_tokenizer, tiny_arch):
    """On an accelerator the 'all rows ended?' sync runs every 8 steps; the extra steps write only padding and
    are cut off, so the Rollout is identical to checking every step (here: EOS ends every row by step 3)."""
    model = model_with(tiny_tokenizer, tiny_arch, "sdpa")
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS]
    eos = greedy_without_cache(model, prompts[0], 10, eos_id=-1)[2]
    cfg = generation.SamplingConfig(max_new_tokens=12, temperature=0.0)
    runs = [generation._sample_chunk(model, prompts, tiny_tokenizer.pad_token_id, eos, cfg,
                                     torch.Generator().manual_seed(0), check_every=k) for k in (1, 5)]
    for a, b in zip(*(dataclasses.astuple(r) for r in runs)):
        assert torch.equal(a, b)


def test_seeded_sampling_is_deterministic_across_batches(tiny_tokenizer, tiny_arch):
    model = model_with(tiny_tokenizer, tiny_arch, "sdpa")
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS]
    args = (model, prompts, tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id)
    a, b, c = (sample(*args, num_samples=2, max_new_tokens=6, batch_size=4, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_the_additive_mask_only_where_transformers_uses_it_as_given():
    from transformers import LlamaConfig

    def config(attn, **kw):
        c = LlamaConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=2, intermediate_size=8, **kw)
        c._attn_implementation = attn
        return c

    assert generation._takes_additive_mask(config("sdpa")) and generation._takes_additive_mask(config("eager"))
    assert not generation._takes_additive_mask(config("flash_attention_2"))
    sliding = config("sdpa")
    sliding.layer_types = ["sliding_attention", "full_attention"]
    assert not generation._takes_additive_mask(sliding)


# ------------------------------------------------------------------------------------ the lean decode step
def llama(num_key_value_heads: int, tie: bool, **kw):
    """A small Llama with weights large enough (std 0.3) that attention is far from uniform, so a wrong position,
    mask column or K/V slot moves the logits well past the tolerance."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=num_key_value_heads, max_position_embeddings=64,
                         tie_word_embeddings=tie, initializer_range=0.3, pad_token_id=0, **kw)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads, tie, extra", [(4, True, {}), (2, False, {}),
                                                  (1, True, {"attention_bias": True, "head_dim": 16})],
                         ids=["mha-tied", "gqa-untied", "mqa-bias-headdim"])
def test_the_lean_step_gives_the_logits_of_transformers_forward(kv_heads, tie, extra):
    """Left-padded prompts of three lengths, a prefill, then 6 decode steps fed the same tokens on both paths: the
    lean step's logits equal those of transformers' forward over its own StaticCache at every step."""
    from transformers import StaticCache

    model = llama(kv_heads, tie, **extra)
    assert decode.lean_model(model) is model
    prompt_ids, prompt_mask = generation.left_pad([[5, 6, 7, 8, 9], [10, 11], [12]], pad_id=0)
    (N, P), A = prompt_ids.shape, 6
    attn = torch.cat([prompt_mask, torch.zeros(N, A, dtype=torch.long)], 1)  # (N, P + A)
    mask = torch.zeros(N, 1, 1, P + A).masked_fill(attn[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    caches = [StaticCache(config=model.config, max_cache_len=P + A) for _ in range(2)]
    pos = positions(prompt_mask)  # (N, P)
    with torch.no_grad():
        for cache in caches:
            model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True)
        step = decode.lean_step(model, caches[1], mask)
        tokens = torch.randint(1, 64, (A, N), generator=torch.Generator().manual_seed(0))
        pos = pos[:, -1:]
        for t in range(A):
            mask[..., P + t] = 0
            pos = pos + 1
            want = model(input_ids=tokens[t][:, None], attention_mask=mask, position_ids=pos, cache=caches[0],
                         use_cache=True).logits[:, -1]  # (N, V)
            got = step(tokens[t], pos, P + t)  # (N, V)
            assert want.std() > 1.0  # logits far from flat: a wrong position or mask would show
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_sampler_runs_only_the_prefill_through_transformers_forward(tiny_tokenizer, tiny_arch, monkeypatch):
    from transformers import LlamaForCausalLM

    model = model_with(tiny_tokenizer, tiny_arch, "sdpa")
    # counted on the class (a forward hook or a forward set on the instance would turn the lean step off)
    forward, calls = LlamaForCausalLM.forward, []
    monkeypatch.setattr(LlamaForCausalLM, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS]
    r = sample(model, prompts, tiny_tokenizer.pad_token_id, -1, max_new_tokens=5, temperature=0.0)
    assert r.response_ids.shape[1] == 5 and len(calls) == 1
    monkeypatch.setenv("RLHFKIT_LEAN_DECODE", "0")  # read at each call: transformers' forward for every token
    calls.clear()
    assert torch.equal(sample(model, prompts, tiny_tokenizer.pad_token_id, -1, max_new_tokens=5,
                              temperature=0.0).response_ids, r.response_ids)
    assert len(calls) == 5


def test_models_the_lean_step_does_not_cover_fall_back(tiny_tokenizer, tiny_arch):
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=2,
                                      n_positions=64)).eval()
    mistral = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                               sliding_window=4))
    flash, hooked, wrapped = llama(2, True), llama(2, True), llama(2, True)
    flash.config._attn_implementation = "flash_attention_2"
    hooked.model.register_forward_pre_hook(lambda module, args: None)  # the lean step would skip these
    wrapped.forward = torch.autocast("cpu", dtype=torch.bfloat16)(wrapped.forward)  # as accelerate's autocast
    assert decode.lean_model(llama(2, True)) is not None
    for other in (gpt2, mistral, flash, hooked, wrapped):
        assert decode.lean_model(other) is None
    # the fallback still samples right: greedy equals the no-cache decode on GPT-2
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS]
    r = sample(gpt2, prompts, tiny_tokenizer.pad_token_id, -1, max_new_tokens=6, temperature=0.0)
    for row, prompt in enumerate(prompts):
        assert r.response_ids[row].tolist() == greedy_without_cache(gpt2, prompt, 6, eos_id=-1)


def test_a_lora_model_takes_the_lean_step_with_its_adapters(tiny_tokenizer, tiny_arch):
    """peft LoRA replaces the attention projections with modules the lean step calls like the projections they
    wrap; with nonzero adapters (and adapter dropout, off while sampling) the sampled log-probs still equal a
    fresh eval-mode forward of the peft model."""
    from rlhfkit.config import LoRAConfig
    from rlhfkit.models import apply_lora

    model = apply_lora(model_with(tiny_tokenizer, tiny_arch, "sdpa"), LoRAConfig(r=4, alpha=8, dropout=0.1)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    assert decode.lean_model(model) is model.get_base_model()
    tok, kw = tiny_tokenizer, dict(temperature=0.7, min_new_tokens=4)
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    r = sample(model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=2, max_new_tokens=8, seed=1, **kw)
    with torch.no_grad():
        fresh = response_logprobs(model, r, eos_id=tok.eos_token_id, **kw)  # (N, A)
        with model.disable_adapter():
            plain = response_logprobs(model, r, eos_id=tok.eos_token_id, **kw)
    torch.testing.assert_close(r.logprobs, fresh, atol=1e-5, rtol=0)
    assert (r.logprobs - plain).abs().max() > 1e-2  # the adapters do change the distribution


# ------------------------------------------------------------------------------------ the RL step's skip
@pytest.fixture(scope="module")
def rl_inputs(tmp_path_factory, tiny_tokenizer, tiny_arch):
    from toy import toy_texts

    from rlhfkit.models import build_tiny, save_model

    root = tmp_path_factory.mktemp("sampler")
    model = save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer, root / "model")
    prompts = root / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": " ".join(t.split()[: 2 + i % 4])} for i, t in enumerate(toy_texts(16, seed=3))])
    return str(model), str(prompts)


def share_e(prompts, responses):
    return [sum(ch == "e" for ch in r) / max(len(r), 1) for r in responses]


def rloo_trainer(rl_inputs, exact: bool = True, *extra: str) -> ppo.Trainer:
    """An RLOO trainer, 4 prompts x 2 samples per step in minibatches of 4; exact=False: a sampler that does not
    vouch for its log-probs, so the step computes old log-probs with a policy forward (the unskipped path)."""
    model, prompts = rl_inputs
    cfg = parse(ppo.PPOConfig, ["--model.name", model, "--prompts", prompts, "--reward", f"{__name__}:share_e",
                                "--advantage", "rloo", "--group-size", "2", "--train.batch-size", "4",
                                "--minibatch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "6",
                                "--min-new-tokens", "2", "--temperature", "0.8", "--optim.lr", "1e-4",
                                "--eos-penalty", "False", "--out", "unused", *extra])
    tr = ppo.build_trainer(cfg, make_accelerator(cfg.train), read_located(prompts, "prompts"))
    tr.sampler = TorchSampler(tr.inner.policy, tr.tokenizer.pad_token_id, tr.tokenizer.eos_token_id, exact)
    return tr


def count_full_forwards(tr: ppo.Trainer) -> list[int]:
    """Counts forwards of the policy over whole rollouts; the sampler's forwards (with a KV cache) are not."""
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += kwargs.get("cache") is None

    tr.inner.policy.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_one_epoch_without_value_head_reuses_the_rollout_logprobs(rl_inputs):
    """lr 1e-4: Adam's first step moves every weight by ~lr whatever the gradient's size, so two runs whose
    gradients differ by float rounding end ~1e-3 x lr apart (at lr 1e-2, 1e-3 apart: not a useful tolerance)."""
    skip, full = rloo_trainer(rl_inputs), rloo_trainer(rl_inputs, exact=False)
    before = [p.detach().clone() for p in skip.inner.parameters()]
    assert ppo.step.reuses_rollout_logprobs(skip) and not ppo.step.reuses_rollout_logprobs(full)
    counts = {"skip": count_full_forwards(skip), "full": count_full_forwards(full)}
    m_skip, m_full = ppo.ppo_step(skip, 0), ppo.ppo_step(full, 0)
    # 2 minibatches: the skip path runs only the 2 training forwards; the full path adds the old-log-prob pass
    # over both minibatches, of which the first is kept as the first training forward (2 + 1)
    assert counts["skip"][0] == 2 and counts["full"][0] == 3
    assert m_skip["ppo/ratio_dev_first"] < 1e-5  # rollout log-probs vs the training forward: float rounding only
    assert m_full["ppo/ratio_dev_first"] == 0.0
    for key in ("objective/kl", "objective/score", "ppo/policy_loss", "ppo/approx_kl", "ppo/clipfrac"):
        assert m_skip[key] == pytest.approx(m_full[key], rel=1e-4, abs=1e-6), key
    # the skip path's entropy comes from the training forwards: the second minibatch's after the first update
    assert m_skip["objective/entropy"] == pytest.approx(m_full["objective/entropy"], rel=1e-4)
    for (name, a), b, b0 in zip(skip.inner.named_parameters(), full.inner.parameters(), before):
        assert (a - b0).abs().max() > 5e-5, name  # trained (two Adam steps of lr 1e-4)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_ppo_with_a_value_head_or_two_epochs_keeps_the_old_logprob_pass(rl_inputs):
    assert not ppo.step.reuses_rollout_logprobs(rloo_trainer(rl_inputs, True, "--ppo-epochs", "2"))
    assert not ppo.step.reuses_rollout_logprobs(rloo_trainer(rl_inputs, True, "--advantage", "gae",
                                                             "--group-size", "1"))


class RecordingSampler(TorchSampler):
    """A stand-in for an inference engine: records the calls an RL step makes through the Sampler seam."""

    def __init__(self, *args):
        super().__init__(*args, exact_logprobs=False)
        self.calls = []

    def sample(self, prompts, sampling, seed):
        self.calls.append(("sample", len(prompts), sampling.samples_per_prompt, seed))
        return super().sample(prompts, sampling, seed)

    def load_weights(self, model):
        self.calls.append(("load_weights", model))
        super().load_weights(model)


def test_the_step_samples_through_the_sampler_and_pushes_weights_after_updating(rl_inputs):
    tr = rloo_trainer(rl_inputs)
    tr.sampler = RecordingSampler(tr.inner.policy, tr.tokenizer.pad_token_id, tr.tokenizer.eos_token_id)
    ppo.ppo_step(tr, 0)
    ppo.ppo_step(tr, 1)
    kinds = [c[0] for c in tr.sampler.calls]
    assert kinds == ["sample", "load_weights", "sample", "load_weights"]
    assert tr.sampler.calls[0][1:3] == (4, 2) and tr.sampler.calls[0][3] != tr.sampler.calls[2][3]
    assert tr.sampler.calls[1][1] is tr.inner.policy
    assert not ppo.step.reuses_rollout_logprobs(tr)  # an engine's log-probs are not the training forward's
