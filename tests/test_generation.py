import torch

from rlhfkit.data import encode_prompt
from rlhfkit.generation import _draw, decode_responses, left_pad, positions, response_logprobs, sample


def eos_loving_model(model, eos_id, after: int):
    """Bias the LM head so EOS dominates from the `after`-th generated step: hooks the logits."""
    state = {"calls": 0}

    def hook(module, inputs, output):
        state["calls"] += 1
        if state["calls"] > after:
            output.logits[..., eos_id] += 1e4
        return output

    return model.register_forward_hook(hook)


def test_stops_at_eos_and_respects_max_tokens(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    prompts = [encode_prompt(tok, "the movie"), encode_prompt(tok, "a bad plot was")]
    r = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=2, max_new_tokens=5, seed=0)
    assert r.response_ids.shape[1] <= 5 and r.response_ids.shape[0] == 4
    handle = eos_loving_model(tiny_model, tok.eos_token_id, after=3)  # prefill + 2 steps, then EOS
    r = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=2, max_new_tokens=20, seed=0)
    handle.remove()
    assert r.ended.all()
    assert r.response_ids.shape[1] == 4  # 3 sampled tokens then EOS, and generation stopped there
    assert (r.response_ids[:, -1] == tok.eos_token_id).all() and r.lengths.tolist() == [4, 4, 4, 4]
    assert decode_responses(tok, r)[0] == tok.decode(r.response_ids[0, :3].tolist(), skip_special_tokens=True)


def test_min_new_tokens_forbids_early_eos(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    handle = eos_loving_model(tiny_model, tok.eos_token_id, after=0)
    r = sample(tiny_model, [encode_prompt(tok, "the")], tok.pad_token_id, tok.eos_token_id, max_new_tokens=6,
               min_new_tokens=6, seed=0)
    handle.remove()
    assert r.lengths.tolist() == [6] and not (r.response_ids == tok.eos_token_id).any()


def test_deterministic_under_seed(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    prompts = [encode_prompt(tok, "the movie was")]
    a = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=3, max_new_tokens=8, seed=5)
    b = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=3, max_new_tokens=8, seed=5)
    c = sample(tiny_model, prompts, tok.pad_token_id, tok.eos_token_id, num_samples=3, max_new_tokens=8, seed=6)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_left_padding_gives_the_same_logprobs_as_unpadded(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    short, long = encode_prompt(tok, "a"), encode_prompt(tok, "the movie was great fun and the plot")
    greedy = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=6, temperature=0.0)
    alone = sample(tiny_model, [short], **greedy)
    batched = sample(tiny_model, [long, short], **greedy)
    n = alone.response_ids.shape[1]
    assert torch.equal(batched.response_ids[1, :n], alone.response_ids[0])
    torch.testing.assert_close(batched.logprobs[1, :n], alone.logprobs[0], atol=1e-5, rtol=0)
    # sampled log-probs equal a fresh forward pass over (left-padded prompt + response)
    torch.testing.assert_close(response_logprobs(tiny_model, batched), batched.logprobs, atol=1e-5, rtol=0)


def test_positions_ignore_left_padding():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_draw_samples_the_softmax_and_never_a_zero_probability_token():
    """Inverse-CDF sampling: frequencies of 40,000 draws match the probabilities (0.01 is 4 standard errors);
    tokens of probability 0 (here first and last, the edges of the CDF) are never drawn."""
    probs = torch.tensor([0.0, 0.5, 0.3, 0.2, 0.0])
    tok = _draw(probs.log().expand(40_000, 5), torch.rand(40_000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(tok, minlength=5).float() / 40_000
    assert freq[0] == 0 and freq[4] == 0 and (freq - probs).abs().max() < 0.01
