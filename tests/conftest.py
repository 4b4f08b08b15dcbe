"""Shared fixtures: a tiny tokenizer and tiny random models, built once per session (seconds, offline)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from toy import toy_texts  # noqa: E402  (shared toy data; conftest is not importable by name)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhfkit.models import train_bpe_tokenizer

    return train_bpe_tokenizer(toy_texts(300), vocab_size=300)


@pytest.fixture(scope="session")
def tiny_arch():
    from rlhfkit.config import TinyArch

    return TinyArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128)


@pytest.fixture
def tiny_model(tiny_tokenizer, tiny_arch):
    from rlhfkit.models import build_tiny

    return build_tiny(tiny_tokenizer, tiny_arch, seed=0)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """A {"text"} corpus JSONL of toy review-like sentences."""
    from rlhfkit.data import write_jsonl

    path = tmp_path_factory.mktemp("toy") / "corpus.jsonl"
    write_jsonl(path, [{"text": t} for t in toy_texts(400)])
    return path


@pytest.fixture(scope="session")
def toy_sft(tmp_path_factory):
    from rlhfkit.data import write_jsonl

    texts = toy_texts(200, seed=1)
    path = tmp_path_factory.mktemp("toy") / "sft.jsonl"
    write_jsonl(path, [{"prompt": " ".join(t.split()[:3]), "response": " " + " ".join(t.split()[3:])} for t in texts])
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The sentiment experiment's smoke preset, run once: the same stages and layout as `make demo` at toy size."""
    from dataclasses import replace

    from rlhfkit.experiments.sentiment import PRESETS, run_experiment

    out = tmp_path_factory.mktemp("sentiment") / "smoke"
    cfg = replace(PRESETS["smoke"], out=str(out), threads=1, seeds=2)  # two replicates: the pooled path runs
    return cfg, run_experiment(cfg)
