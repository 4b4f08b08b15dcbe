import json
import math

import torch
from transformers import AutoModelForCausalLM

from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, OptimConfig, TinyArch, TrainConfig
from rlhfkit.data import TokenBatch
from rlhfkit.models import apply_lora, save_model
from rlhfkit.sft import PretrainConfig, SFTConfig, lm_objective, pack_corpus, run_pretrain, run_sft

SMALL = TinyArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are given, so the loss can be worked out by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        logits = self.logits[:, -logits_to_keep:] if logits_to_keep else self.logits  # as transformers' models
        return type("Out", (), {"logits": logits})()


def test_sft_loss_is_cross_entropy_over_response_tokens_only_by_hand():
    # V = 2. Row 0: tokens [0, 1, 1], prompt = token 0, response = tokens 1, 1 (mask [0, 1, 1]).
    # Row 1: tokens [1, 0, pad], response = token 0 only (mask [0, 1, 0]).
    # logits[:, t] predict token t+1. p(1) at row 0 t=0 is sigma(2)=0.880797, at t=1 it is 0.5;
    # row 1 t=0 predicts token 0 with p = sigma(1) = 0.731059; row 1 t=1 is padding and must not count.
    logits = torch.tensor([[[0.0, 2.0], [0.0, 0.0], [9.0, -9.0]], [[1.0, 0.0], [-50.0, 50.0], [0.0, 0.0]]])
    batch = TokenBatch(torch.tensor([[0, 1, 1], [1, 0, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]),
                       torch.tensor([[0, 1, 1], [0, 1, 0]]))
    loss, metrics = lm_objective(FixedLogits(logits), batch)
    expected = -(math.log(0.880797) + math.log(0.5) + math.log(0.731059)) / 3
    assert abs(loss.item() - expected) < 1e-5 and metrics["tokens"] == 3.0


def test_lora_sft_changes_only_adapter_weights_and_merged_save_reloads(tmp_path, tiny_tokenizer, tiny_model,
                                                                       toy_sft):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model = apply_lora(tiny_model, LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    from rlhfkit.data import collate, encode_sft_records, read_records
    from rlhfkit.loop import fit
    from rlhfkit.tracking import Run

    examples, _ = encode_sft_records(tiny_tokenizer, read_records(toy_sft, "sft")[:32], DataConfig())
    cfg = TrainConfig(batch_size=8, max_steps=3, progress=False, save_every=100)
    fit(lm_objective, model, examples, lambda ex: collate(ex, tiny_tokenizer.pad_token_id), cfg,
        OptimConfig(lr=1e-2, warmup_steps=0), Run(tmp_path / "run", cfg))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            assert p.abs().sum() > 0, f"{name} did not change"
    frozen_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in base.items():
        assert torch.equal(frozen_now[k], v), f"base weight {k} changed"
    out = save_model(model, tiny_tokenizer, tmp_path / "merged", merge_lora=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[tiny_tokenizer.bos_token_id, 5, 6, 7]])
    model.eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    adapter = save_model(model, tiny_tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()


def test_smoke_pretrain_lowers_held_out_loss_and_sft_runs_on_it(tmp_path, toy_corpus, toy_sft):
    common = dict(progress=False, eval_every=1000, save_every=1000, threads=1)
    before = run_pretrain(PretrainConfig(
        data=DataConfig(train=str(toy_corpus), max_length=32), model=ModelConfig(tiny=SMALL), vocab_size=300,
        train=TrainConfig(batch_size=16, max_steps=1, **common), out=str(tmp_path / "p0")))
    after = run_pretrain(PretrainConfig(
        data=DataConfig(train=str(toy_corpus), max_length=32), model=ModelConfig(tiny=SMALL), vocab_size=300,
        train=TrainConfig(batch_size=16, max_steps=60, **common), optim=OptimConfig(lr=1e-2, warmup_steps=5),
        out=str(tmp_path / "p1")))
    assert after["eval_loss"] < before["eval_loss"] - 1.0, (before, after)
    assert math.isclose(after["perplexity"], math.exp(after["eval_loss"]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p1" / "model")
    assert model.config.vocab_size == 300
    sft = run_sft(SFTConfig(data=DataConfig(train=str(toy_sft), max_length=32, max_prompt_length=16),
                            model=ModelConfig(name=str(tmp_path / "p1" / "model")),
                            train=TrainConfig(batch_size=8, max_steps=5, **common), out=str(tmp_path / "s")))
    assert math.isfinite(sft["eval_loss"]) and sft["truncation"]["seen"] > 0
    saved = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert saved["step"] == 5 and (tmp_path / "s" / "config.yaml").exists()


def test_pack_corpus_blocks(tiny_tokenizer):
    blocks = pack_corpus(tiny_tokenizer, ["the movie", "was fun"], block=4)
    stream = [t for b in blocks for t in b.input_ids]
    assert stream.count(tiny_tokenizer.bos_token_id) == 2 and stream.count(tiny_tokenizer.eos_token_id) == 2
    assert all(len(b.input_ids) <= 4 and all(b.loss_mask) for b in blocks)
