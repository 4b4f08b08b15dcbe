"""Saved directories load the ordinary transformers way and agree with rlhfkit.

A reward model scores through `AutoModelForSequenceClassification` + `AutoTokenizer` exactly as `rm score` does
(the recipe in docs/formats.md), single and padded; every stage's `model/` and `snapshots/step-N/` hold the
tokenizer and load with `AutoTokenizer` / `AutoModelForCausalLM` (an unmerged LoRA adapter with peft's
`AutoPeftModelForCausalLM`); and `tiny`, a random model, says so everywhere but pretraining.

Tiny random Llama models (d=32, 2 layers) on the 300-token toy BPE; 2-step runs with 2 snapshots each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from toy import WORDS

from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import encode_prompt, write_jsonl
from rlhfkit.models import UNTRAINED_NOTE, build_tiny, load_causal_lm, save_model

FAST = dict(progress=False, log_every=1000, eval_every=1000, save_every=1000, threads=1)
TWO_STEPS = TrainConfig(batch_size=4, max_steps=2, snapshots=2, **FAST)  # snapshots at steps 1 and 2
PAIRS = [("the movie", " was great fun"), ("i think", " it was boring"), ("the plot was", " awful awful"),
         ("this film", " great")]
EXACT_PAIRS = [("the movie ", "was great"), ("the fi", "lm was good")]  # BPE would merge across the boundary


def count_e(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge / reward for the online-DPO and PPO runs: the share of a response's characters that are 'e'."""
    return [sum(ch == "e" for ch in r) / max(len(r), 1) + 0.001 * len(r) for r in responses]


def pads_with_eos(tokenizer):
    """A copy of `tokenizer` that pads with its EOS, as most causal LMs' tokenizers do."""
    return tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, bos_token=tokenizer.bos_token,
                               eos_token=tokenizer.eos_token, pad_token=tokenizer.eos_token)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    """A tiny causal LM + tokenizer saved like an SFT run's output (the trunk / policy every stage starts from)."""
    return save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                      tmp_path_factory.mktemp("export") / "base")


@pytest.fixture(scope="module")
def eos_pad_base_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    """The same, with a tokenizer whose pad token is its EOS."""
    tok = pads_with_eos(tiny_tokenizer)
    return save_model(build_tiny(tok, tiny_arch, seed=0), tok, tmp_path_factory.mktemp("export") / "eos_pad_base")


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """Preferences and prompts JSONL on the toy words."""
    root = tmp_path_factory.mktemp("export_data")
    rng = random.Random(0)

    def words(n: int) -> str:
        return " " + " ".join(rng.choice(WORDS) for _ in range(n))

    write_jsonl(root / "prefs.jsonl", [{"prompt": words(3).strip(), "chosen": words(4), "rejected": words(4)}
                                       for _ in range(24)])
    write_jsonl(root / "prompts.jsonl", [{"prompt": words(3).strip()} for _ in range(12)])
    return root / "prefs.jsonl", root / "prompts.jsonl"


# ------------------------------------------------------------------------------- A: a saved reward model
def _train_rm(base, prefs, out, train=TrainConfig(batch_size=4, max_steps=2, **FAST)):
    from rlhfkit.reward import RMConfig, run_rm_train

    cfg = RMConfig(data=DataConfig(train=str(prefs), max_length=48, max_prompt_length=16, eval_fraction=0.25),
                   model=ModelConfig(name=str(base)), train=train, optim=OptimConfig(lr=1e-2, warmup_steps=0),
                   out=str(out))
    return run_rm_train(cfg)


@pytest.mark.parametrize("trunk", ["base_dir", "eos_pad_base_dir"])
def test_saved_reward_model_scores_like_rlhfkit_with_plain_transformers(trunk, data_files, tmp_path, request):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.labeling.gold import make_scorer
    from rlhfkit.reward import load_reward_scorer
    from rlhfkit.reward.score import encode_for_scoring

    summary = _train_rm(request.getfixturevalue(trunk), data_files[0], tmp_path / "rm")
    path = summary["model"]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    raw = torch.tensor(load_reward_scorer(path, normalize=False)(prompts, responses))  # (N,) rlhfkit's raw
    with torch.no_grad():
        single = torch.stack([model(**tok(p + r, return_tensors="pt")).logits[0, 0] for p, r in PAIRS])
        as_pairs = torch.stack([model(**tok(p, r, return_tensors="pt")).logits[0, 0] for p, r in PAIRS])
        padded = model(**tok([p + r for p, r in PAIRS], padding=True, return_tensors="pt")).logits[:, 0]
        padded_pairs = model(**tok(prompts, responses, padding=True, return_tensors="pt")).logits[:, 0]
    for ours in (single, as_pairs, padded, padded_pairs):
        torch.testing.assert_close(ours, raw, atol=1e-4, rtol=0)
    assert len(set(raw.tolist())) == len(PAIRS)  # distinct scores: the comparison is not vacuous
    norm = model.config.rlhfkit_reward_norm
    torch.testing.assert_close((padded - norm["mean"]) / norm["std"],
                               torch.tensor(make_scorer(f"rm:{path}")(prompts, responses)), atol=1e-4, rtol=0)
    # rlhfkit reads the same ids, with one EOS, even though its tokenizer now appends EOS by itself
    encoding = model.config.rlhfkit_encoding
    for p, r in PAIRS + EXACT_PAIRS:
        ids = encode_for_scoring(tok, p, r, encoding).input_ids
        assert ids == tok(p, r)["input_ids"] and ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    # joint tokenisation can merge across the boundary; the pair form never does, as in rlhfkit
    assert any(tok(p + r)["input_ids"] != tok(p, r)["input_ids"] for p, r in EXACT_PAIRS)


def test_a_reward_model_from_elsewhere_is_still_read_at_the_eos(tmp_path, tiny_tokenizer, tiny_arch):
    """A one-label directory whose tokenizer neither appends EOS nor pads with anything else: rlhfkit appends
    the EOS and reads the score there, as before."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.data import encode_pair
    from rlhfkit.reward import load_reward_scorer

    tok = pads_with_eos(tiny_tokenizer)
    config = build_tiny(tok, tiny_arch, seed=0).config
    config.num_labels = 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scores = load_reward_scorer(tmp_path / "rm", normalize=False)([p for p, _ in PAIRS], [r for _, r in PAIRS])
    with torch.no_grad():
        for (p, r), score in zip(PAIRS, scores):
            ids = encode_pair(tok, p, r, 64, 32).input_ids
            assert tok(p + r)["input_ids"][-1] != tok.eos_token_id and ids[-1] == tok.eos_token_id
            at_eos = model.score(model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])[0]
            assert score == pytest.approx(float(at_eos), abs=1e-5)


# ---------------------------------------------------------------------- B: every saved directory is complete
def _saved_dirs(out: Path) -> list[Path]:
    """<out>/model and every <out>/snapshots/step-N, checking the snapshots are the two expected."""
    snaps = sorted((out / "snapshots").glob("step-*"))
    assert [d.name for d in snaps] == ["step-0000001", "step-0000002"]
    return [out / "model", *snaps]


def _check_causal_dir(path: Path, prompt: str = "the movie was") -> torch.Tensor:
    """The directory loads with AutoTokenizer + AutoModelForCausalLM, which encode `prompt` and score it exactly
    as rlhfkit's own loading does; returns the logits (1, T, V)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (path / "tokenizer.json").exists() and (path / "tokenizer_config.json").exists(), path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ours, our_tok = load_causal_lm(ModelConfig(name=str(path)))
    ids = encode_prompt(our_tok, prompt)
    assert tok(prompt)["input_ids"] == ids
    with torch.no_grad():
        logits = model(**tok(prompt, return_tensors="pt")).logits
        torch.testing.assert_close(logits, ours.eval()(input_ids=torch.tensor([ids])).logits, atol=0, rtol=0)
    return logits


def _check_run(out: Path) -> None:
    """Every saved directory of a run is complete, and the final model is the last snapshot's weights."""
    model, *snapshots = _saved_dirs(out)
    logits = [_check_causal_dir(d) for d in (model, *snapshots)]
    torch.testing.assert_close(logits[0], logits[-1], atol=0, rtol=0)


def test_pretrain_saves_complete_directories_and_says_nothing_of_tiny(tmp_path, toy_corpus, tiny_arch, capsys):
    from rlhfkit.sft import PretrainConfig, run_pretrain

    run_pretrain(PretrainConfig(data=DataConfig(train=str(toy_corpus), max_length=32),
                                model=ModelConfig(tiny=tiny_arch), vocab_size=300, train=TWO_STEPS,
                                out=str(tmp_path / "pre")))
    assert UNTRAINED_NOTE not in capsys.readouterr().err
    _check_run(tmp_path / "pre")


@pytest.mark.parametrize("lora", ["full", "lora-merged"])
def test_sft_saves_complete_directories(lora, tmp_path, toy_sft, base_dir):
    from rlhfkit.sft import SFTConfig, run_sft

    run_sft(SFTConfig(data=DataConfig(train=str(toy_sft), max_records=40), model=ModelConfig(name=str(base_dir)),
                      lora=LoRAConfig(r=4 if lora == "lora-merged" else 0), train=TWO_STEPS,
                      optim=OptimConfig(lr=1e-2, warmup_steps=0), out=str(tmp_path / "sft")))
    _check_run(tmp_path / "sft")


def test_unmerged_lora_saves_the_adapter_which_peft_loads_on_its_base(tmp_path, toy_sft, base_dir):
    """--lora.no-merge: model/ is the adapter alone plus the tokenizer; peft's AutoPeftModelForCausalLM loads it
    on the base model it names, and scores like the merged last snapshot (snapshots are always merged)."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from rlhfkit.sft import SFTConfig, run_sft

    run_sft(SFTConfig(data=DataConfig(train=str(toy_sft), max_records=40), model=ModelConfig(name=str(base_dir)),
                      lora=LoRAConfig(r=4, merge=False), train=TWO_STEPS,
                      optim=OptimConfig(lr=1e-2, warmup_steps=0), out=str(tmp_path / "sft")))
    model_dir, *snapshots = _saved_dirs(tmp_path / "sft")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in
                                                                                       model_dir.iterdir()}
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    merged = [_check_causal_dir(d) for d in snapshots][-1]
    tok = AutoTokenizer.from_pretrained(model_dir)
    adapter = AutoPeftModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = adapter(**tok("the movie was", return_tensors="pt")).logits
    torch.testing.assert_close(logits, merged, atol=1e-5, rtol=1e-5)


def test_unmerged_lora_of_tiny_is_refused_before_any_work(tmp_path, toy_sft, tiny_arch):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.sft import SFTConfig, run_sft

    with pytest.raises(RlhfkitError, match="no-merge"):
        run_sft(SFTConfig(data=DataConfig(train=str(toy_sft)), model=ModelConfig(tiny=tiny_arch),
                          lora=LoRAConfig(r=4, merge=False), out=str(tmp_path / "sft")))
    assert not (tmp_path / "sft").exists()


@pytest.mark.parametrize("loss, lora", [("dpo", 0), ("ipo", 0), ("cdpo", 4), ("preferred_ft", 0),
                                        ("unlikelihood", 4)])
def test_offline_dpo_saves_complete_directories(loss, lora, tmp_path, data_files, base_dir):
    from rlhfkit.dpo import DPOConfig, run_dpo

    run_dpo(DPOConfig(data=DataConfig(train=str(data_files[0]), max_length=32, max_prompt_length=16),
                      model=ModelConfig(name=str(base_dir)), lora=LoRAConfig(r=lora), loss=loss, kl_prompts=0,
                      train=TWO_STEPS, optim=OptimConfig(lr=1e-2, warmup_steps=0), out=str(tmp_path / "dpo")))
    _check_run(tmp_path / "dpo")


def test_online_dpo_saves_complete_directories(tmp_path, data_files, base_dir):
    from rlhfkit.dpo import DPOConfig, run_online

    run_online(DPOConfig(online=True, rounds=1, prompts=str(data_files[1]), judge=f"{__name__}:count_e",
                         samples_per_prompt=3, max_new_tokens=6, kl_prompts=0,
                         data=DataConfig(max_length=32, max_prompt_length=16, eval_fraction=0.25),
                         model=ModelConfig(name=str(base_dir)), train=TWO_STEPS, out=str(tmp_path / "online")))
    _check_run(tmp_path / "online" / "round-1")
    _check_causal_dir(tmp_path / "online" / "model")


def test_ppo_saves_complete_directories(tmp_path, data_files, base_dir):
    from rlhfkit.ppo import PPOConfig, run_ppo

    run_ppo(PPOConfig(model=ModelConfig(name=str(base_dir)), prompts=str(data_files[1]),
                      reward=f"{__name__}:count_e", max_new_tokens=6, minibatch_size=4, ppo_epochs=1,
                      train=TWO_STEPS, out=str(tmp_path / "ppo")))
    _check_run(tmp_path / "ppo")


def test_rm_train_saves_complete_snapshots(tmp_path, data_files, base_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.reward import load_reward_scorer

    summary = _train_rm(base_dir, data_files[0], tmp_path / "rm", TWO_STEPS)
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    for path in _saved_dirs(tmp_path / "rm"):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        with torch.no_grad():
            plain = model(**tok(prompts, responses, padding=True, return_tensors="pt")).logits[:, 0]
        ours = load_reward_scorer(path, normalize=False)(prompts, responses)
        torch.testing.assert_close(plain, torch.tensor(ours), atol=1e-4, rtol=0)
    assert summary["model"] == str(tmp_path / "rm" / "model")


# ------------------------------------------------------------------------------- C: tiny says it is untrained
def test_tiny_says_it_is_untrained_once_unless_trained_from_scratch(tiny_tokenizer, tiny_arch, capsys):
    load_causal_lm(ModelConfig(tiny=tiny_arch), tokenizer=tiny_tokenizer)
    assert capsys.readouterr().err.splitlines() == [UNTRAINED_NOTE]
    load_causal_lm(ModelConfig(tiny=tiny_arch), tokenizer=tiny_tokenizer, untrained_ok=True)
    assert capsys.readouterr().err == ""


def test_a_stage_from_tiny_says_it_once(tmp_path, toy_sft, base_dir, tiny_arch, capsys):
    from rlhfkit.reward import load_reward_model
    from rlhfkit.sft import SFTConfig, run_sft

    run_sft(SFTConfig(data=DataConfig(train=str(toy_sft), max_records=16), train=TrainConfig(max_steps=1, **FAST),
                      model=ModelConfig(tiny=tiny_arch, tokenizer=str(base_dir)), out=str(tmp_path / "sft")))
    assert capsys.readouterr().err.count(UNTRAINED_NOTE) == 1
    load_reward_model(ModelConfig(tiny=tiny_arch, tokenizer=str(base_dir)))
    assert capsys.readouterr().err.count(UNTRAINED_NOTE) == 1
    load_causal_lm(ModelConfig(name=str(base_dir)))
    assert UNTRAINED_NOTE not in capsys.readouterr().err
